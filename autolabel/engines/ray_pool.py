"""`--engine ray`: a pool of Ray actors, one model each, labelling batches the driver streams.

Each actor builds the run's Labeler once and runs `runner.label_batch` on the batches it is sent:
it reads the images from the input location and writes masks and previews straight to the output
location, and returns the records. The driver (the run loop) persists each record as it arrives
and assembles annotations.json and manifest.jsonl at the end, as with the local engine.

A worker process that dies (SIGKILL, a lost node) loses only its batches in flight: Ray restarts
the actor and the driver sends those batches again. Outputs are written whole under fixed names,
so an image labelled twice leaves one copy, and its record is kept once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from autolabel.errors import AutolabelError, UsageError

if TYPE_CHECKING:
    from autolabel.api import Labeler
    from autolabel.config import RunConfig
    from autolabel.io.images import ImageEntry
    from autolabel.io.storage import LocalImages, LocalOutput, RemoteImages, RemoteOutput

# Batches queued on each actor: one running, one waiting, so no worker idles between batches.
IN_FLIGHT = 2
# Seconds to wait for a cluster's GCS port to accept a connection.
CONNECT_TIMEOUT = 10
# Tries of a batch whose worker process died before its images are reported failed: Ray
# restarts the actor and sends the batch again itself (an image that kills its worker each time
# must not stall the run).
TRIES = 3


def check_options(config: RunConfig) -> None:
    """UsageError for Ray options a run cannot use, or for Ray not being installed."""
    workers = config.workers
    if workers is not None and (type(workers) is not int or workers < 1):
        raise UsageError("--workers must be a whole number, at least 1")
    if not config.gpus_per_worker >= 0:
        raise UsageError("--gpus-per-worker must be 0 or more")
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray: pip install 'autolabel[ray]'") from exc
    _probe(config.ray_address or os.environ.get("RAY_ADDRESS") or "")


def start(
    config: RunConfig,
    labeler: Labeler,
    source: LocalImages | RemoteImages,
    output: LocalOutput | RemoteOutput,
) -> RayPool:
    """Connect to the cluster and start the workers; errors here come before anything is written."""
    import ray

    # "local" starts a new instance even where `ray start` left an address behind in /tmp/ray.
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    where = "a new local Ray instance" if address == "local" else address
    try:
        ray.init(address=address, log_to_driver=False, logging_level="error")
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"Ray cluster at {where}: cannot connect ({cause})") from exc
    try:
        return RayPool(config, labeler, source, output, where)
    except BaseException:
        ray.shutdown()
        raise


def _probe(address: str) -> None:
    """A UsageError, within seconds, when nothing answers at a host:port address (ray.init
    itself keeps retrying for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return  # "auto", a ray:// client address, or a new local instance: ray.init checks
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__
        raise UsageError(f"Ray cluster at {address}: cannot connect ({cause})") from exc


class RayPool:
    """The actors of one run and the batches in flight on them."""

    def __init__(
        self,
        config: RunConfig,
        labeler: Labeler,
        source: LocalImages | RemoteImages,
        output: LocalOutput | RemoteOutput,
        where: str,
    ) -> None:
        import ray
        import torch

        self.config, self.source, self.output = config, source, output
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        per_worker = config.gpus_per_worker
        workers = config.workers or (int(gpus // per_worker) if per_worker else 1)
        if per_worker and gpus < per_worker * max(workers, 1):
            raise UsageError(
                f"Ray cluster at {where}: {gpus:g} GPU(s), but {max(workers, 1)} worker(s) x "
                f"{per_worker:g} GPU(s) were asked for"
            )
        if cpus < workers:
            raise UsageError(
                f"Ray cluster at {where}: {cpus:g} CPU(s), fewer than the {workers} worker(s) "
                "asked for (each takes one)"
            )
        actor = ray.remote(Worker).options(
            num_cpus=1, num_gpus=per_worker, max_restarts=-1, max_task_retries=TRIES - 1
        )
        # Workers run the model with the driver's torch thread count (Ray gives each one thread
        # otherwise): CPU reductions then split as the local engine's do, for the same masks.
        threads = torch.get_num_threads()
        vocabulary = labeler.vocabulary
        identity = labeler.identity()
        job = replace(config, vocab=vocabulary)  # the resolved vocabulary, not a local file
        self.actors = [actor.remote(job, identity, source, output, threads) for _ in range(workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            raise AutolabelError(f"Ray workers could not start: {_cause(exc)}") from exc

    def process(self, todo: list[ImageEntry], warnings: list[str]) -> Iterator[dict[str, Any]]:
        """Yield each image's record as its batch finishes (in completion order)."""
        import ray

        size = self.config.batch_size
        batches = (todo[i : i + size] for i in range(0, len(todo), size))
        flight: dict[Any, tuple[Any, list[ImageEntry], list[Any]]] = {}

        def send_next(actor: Any) -> None:
            batch = next(batches, None)
            if batch is not None:
                stamps = [self.source.stamp(e) for e in batch]
                flight[actor.label.remote(batch, stamps)] = (actor, batch, stamps)

        for actor in self.actors:
            for _ in range(IN_FLIGHT):
                send_next(actor)
        while flight:
            ready, _ = ray.wait(list(flight), num_returns=1)
            actor, batch, stamps = flight.pop(ready[0])
            try:
                records, notes = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                raise _cause(exc) from None  # the error label_batch itself raised (disk full)
            except ray.exceptions.RayError as exc:  # the worker died on every try
                records, notes = self._lost(batch, stamps, exc), []
            for note in notes:
                if note not in warnings:
                    warnings.append(note)
            yield from records
            send_next(actor)

    def _lost(self, batch: list[ImageEntry], stamps: list[Any], exc: Exception) -> list[dict]:
        """Failed records for a batch whose worker died on every try (reported, resumable)."""
        from autolabel.runner import failed_record

        reason = f"Ray worker died {TRIES} times while labelling it ({type(exc).__name__})"
        return [
            failed_record(entry, reason, 0.0, stamp, self.output)
            for entry, stamp in zip(batch, stamps, strict=True)
        ]

    def close(self) -> None:
        """Stop the workers and disconnect from the cluster."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        ray.shutdown()


class Worker:
    """A Ray actor: one Labeler (one model in memory) that labels the batches it is sent."""

    def __init__(
        self,
        config: RunConfig,
        identity: dict[str, Any],
        source: LocalImages | RemoteImages,
        output: LocalOutput | RemoteOutput,
        threads: int,
    ) -> None:
        import torch

        from autolabel.api import Labeler

        torch.set_num_threads(threads)
        self.labeler = Labeler.from_config(config, lazy=False)
        if self.labeler.identity() != identity:
            raise RuntimeError("the worker's labeler differs from the driver's (versions differ?)")
        self.config, self.source, self.output = config, source, output

    def ready(self) -> int:
        """The worker's process id, once its model is loaded."""
        return os.getpid()

    def label(
        self, batch: list[ImageEntry], stamps: list[Any]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Label one batch, writing its outputs; its records and any run warnings."""
        from autolabel.runner import label_batch

        warnings: list[str] = []
        records = list(
            label_batch(
                batch, stamps, self.labeler, self.config, self.source, self.output, warnings
            )
        )
        return records, warnings


def _cause(exc: Exception) -> Exception:
    """The exception raised inside a worker, out of Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc
