"""The local engine: the model in this process, the rest of each image's work beside it.

While the model runs on one batch, threads decode the next ones (Pillow releases the GIL while
it decodes), worker processes run the previous batch's CRFs (pydensecrf holds the GIL for a whole
inference, so only processes overlap it; the method tails they run import no torch, so a worker
starts in a fraction of a second), and one writer thread takes each image in input order through
SAM, instance extraction and writing. Records come back in the order of the serial loop, so the
run store, resume and every output are the same; `cpu_workers=0` runs the serial loop itself.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from autolabel.engines.worker import watch_parent
from autolabel.errors import ImageError, UsageError
from autolabel.io.images import ImageEntry, LoadedImage, LoadError
from autolabel.pipeline import Staged, complete
from autolabel.runner import image_record, label_batch

if TYPE_CHECKING:
    from autolabel.api import Labeler
    from autolabel.config import RunConfig
    from autolabel.io.storage import LocalImages, LocalOutput, RemoteImages, RemoteOutput

DECODE_THREADS = 2
DECODE_AHEAD = 2  # batches decoded ahead of the model
WRITE_BEHIND = 2  # batches the writer may hold before the model waits for it
MAX_CPU_WORKERS = 4


def default_workers(device_type: str) -> int:
    """Worker processes for method tails: one per core the model leaves, at most 4.

    On CPU the model's threads take torch.get_num_threads() cores (by default all of them, and
    then the serial loop runs: on 2 cores the overlapped engine measured 0.87x the serial
    images/s for toy `car`, its CRF worker and the model's threads fighting over the cores);
    on a GPU the model needs one core to drive it.
    """
    import torch

    busy = 1 if device_type != "cpu" else torch.get_num_threads()
    return max(0, min(MAX_CPU_WORKERS, (os.cpu_count() or 1) - busy))


def check_workers(value: int | None) -> int | None:
    """--cpu-workers as given (None: the default, chosen when the model is loaded); UsageError
    for anything but a whole number >= 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UsageError(f"--cpu-workers must be a whole number >= 0, not {value!r}")
    return value


def process(
    todo: list[ImageEntry],
    labeler: Labeler,
    config: RunConfig,
    source: LocalImages | RemoteImages,
    output: LocalOutput | RemoteOutput,
    warnings: list[str],
) -> Iterator[dict[str, Any]]:
    """Yield one finished record per entry, in order (overlapped unless cpu_workers is 0)."""
    workers = config.cpu_workers  # checked by runner.check_engine before the run started
    if workers is None:
        workers = default_workers(labeler.device_type)
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    if workers == 0:
        for batch in batches:
            stamps = [source.stamp(entry) for entry in batch]  # before reading: load says why
            yield from label_batch(batch, stamps, labeler, config, source, output, warnings)
        return
    with ExitStack() as stack:
        decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="autolabel-decode")
        writer = ThreadPoolExecutor(1, thread_name_prefix="autolabel-write")
        tails = Tails(workers, warnings)
        # On any exit queued work is dropped and nothing is left running; callbacks run last
        # first, so the writer stops before the workers whose results it may be waiting for.
        for pool in (tails, decoder, writer):
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        decoded: deque[list[Future]] = deque()
        written: deque[Future] = deque()
        for index, batch in enumerate(batches):
            while len(decoded) <= DECODE_AHEAD and index + len(decoded) < len(batches):
                ahead = batches[index + len(decoded)]
                decoded.append([decoder.submit(_read, source, entry) for entry in ahead])
            items = [future.result() for future in decoded.popleft()]
            t0 = time.perf_counter()
            good = [item for _, item in items if isinstance(item, LoadedImage)]
            staged = labeler.run_model(good) if good else {}
            seconds = (time.perf_counter() - t0) / len(batch)
            pending = {
                rel: tails.submit(rel, s) for rel, s in staged.items() if isinstance(s, Staged)
            }
            work = (items, staged, pending, seconds, labeler, config, output, warnings)
            written.append(writer.submit(_write_batch, tails, *work))
            while len(written) > WRITE_BEHIND or (written and written[0].done()):
                yield from written.popleft().result()
        while written:
            yield from written.popleft().result()


def _read(source: LocalImages | RemoteImages, entry: ImageEntry) -> tuple[Any, Any]:
    stamp = source.stamp(entry)  # before reading: load says why a file went away
    return stamp, source.load(entry)


def _write_batch(
    tails: Tails,
    items: list[tuple[Any, LoadedImage | LoadError]],
    staged: dict[str, Staged | ImageError],
    pending: dict[str, Future | None],
    model_seconds: float,
    labeler: Labeler,
    config: RunConfig,
    output: LocalOutput | RemoteOutput,
    warnings: list[str],
) -> list[dict[str, Any]]:
    """The writer thread's part of a batch: each image's tail result, SAM, instances, outputs and
    record, in input order."""
    records = []
    for stamp, item in items:
        t0 = time.perf_counter()
        if isinstance(item, LoadError):
            outcome: Any = item
        else:
            rel = item.entry.rel
            state = staged[rel]
            if isinstance(state, ImageError):
                outcome = state
            else:
                outcome = labeler.to_instances(state, tails.result(rel, state, pending[rel]))
        seconds = model_seconds + time.perf_counter() - t0
        records.append(
            image_record(item, outcome, stamp, seconds, labeler, config, output, warnings)
        )
    return records


class Tails:
    """Worker processes for the method tails worth one (a CRF); a light tail runs in the caller.

    A worker that dies (killed, out of memory) breaks the pool: a fresh one takes over, each
    image in flight is tried once more there, and an image whose second try breaks it too is
    reported as failed, so one poisonous image cannot stop the run. If the pool breaks before
    any worker has finished a tail, workers cannot start here (a script without the __main__
    guard re-runs itself in them): the tails run in this process from then on, with a warning.
    """

    def __init__(self, workers: int, warnings: list[str] | None = None) -> None:
        self.workers = workers
        self.warnings = [] if warnings is None else warnings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._finished = 0  # tails a worker has returned
        self._here = False  # workers could not start: every tail runs in this process

    def submit(self, rel: str, staged: Staged) -> Future | None:
        """Start an image's tail in a worker (None: it runs in result, in this process)."""
        if not staged.finish.heavy or self._here:
            return None
        return self._submit(rel, staged)

    def result(self, rel: str, staged: Staged, future: Future | None) -> Any:
        """The image's SegResult (or ImageError), waiting for its worker if it has one."""
        if future is None:
            return complete(rel, staged.finish, staged.box)
        try:
            return self._returned(future)
        except BrokenProcessPool as exc:
            if self._finished == 0 and not self._here:
                self._here = True
                self.warnings.append(
                    f"CRF worker processes could not start ({exc}); the CRFs ran in the main "
                    'process (a script that labels folders needs `if __name__ == "__main__":`)'
                )
            if self._here:
                return complete(rel, staged.finish, staged.box)
        try:
            return self._returned(self._submit(rel, staged))
        except BrokenProcessPool as exc:
            reason = f"segmentation failed: the process running its CRF died twice ({exc})"
            return ImageError(rel, reason, "segment")

    def _returned(self, future: Future) -> Any:
        result = future.result()
        self._finished += 1
        return result

    def _submit(self, rel: str, staged: Staged) -> Future:
        with self._lock:  # the model's thread submits, the writer resubmits
            if self._pool is None:
                self._pool = self._start()
            try:
                return self._pool.submit(complete, rel, staged.finish, staged.box)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                return self._pool.submit(complete, rel, staged.finish, staged.box)

    def _start(self) -> ProcessPoolExecutor:
        # spawn: a fork of a process running torch's thread pools can deadlock.
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=watch_parent,
            initargs=(os.getpid(),),
        )

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the workers (they finish what they hold when wait)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
