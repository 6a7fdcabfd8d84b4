"""What a local-engine worker process runs before its first task: a watch on its parent.

A worker of a ProcessPoolExecutor holds both ends of its task pipe, so when the run is killed
(SIGKILL, the OOM killer) it never sees end-of-file and would wait forever as an orphan; this
thread ends it as soon as its parent is gone.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def watch_parent(parent: int) -> None:
    """End this process (within POLL_SECONDS) once the process `parent` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="autolabel-parent-watch", daemon=True).start()
