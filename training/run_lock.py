"""One training process per run folder: an advisory lock on `run_dir/train.lock`, held while a run trains
and released by the operating system when the process ends, however it ends."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_NAME = "train.lock"


class RunFolderInUse(OSError):
    """Another process is training in this run folder."""


def _try_lock(handle: IO[str]) -> bool:
    """Take the lock without waiting; False when another process holds it."""
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block; raise RunFolderInUse, naming the holder, when it is taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    with open(path, "a+", encoding="utf-8") as handle:
        handle.seek(0)
        if not _try_lock(handle):
            try:
                holder = handle.read().strip() or "another process"
            except OSError:  # Windows: the holder's byte range cannot be read
                holder = "another process"
            raise RunFolderInUse(
                f"{run_dir} is being trained by {holder}: two processes in one run folder would overwrite "
                "each other's checkpoints and log. Wait for that run to end, or stop it (SIGTERM saves "
                "last.pt), then run the same command again to resume."
            )
        # the holder's description sits after the first byte, which Windows locks
        handle.seek(0)
        handle.truncate()
        handle.write(f" pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
