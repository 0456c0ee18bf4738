"""One trainer per run folder: the lock ``openmix-train`` holds while it trains a run.

Two processes that train the same run at once would both resume from ``last.ckpt`` and overwrite
each other's checkpoints and metrics. That happens when one sweep is started twice to share its
runs (two shells; a parallel launcher's worker left running by a killed parent; a SLURM job
requeued while the first still runs). So the trainer of a run holds an exclusive ``flock`` on
``<run>/running.lock`` (which names its host and process), and another process finds the run
taken and skips it. The operating system releases the lock when its process ends, however it
ends, so a killed trainer never leaves a run locked. Across machines the lock works where the
shared file system supports ``flock`` (NFSv4, Lustre mounted with ``flock``, local disks); where
``fcntl`` does not exist (Windows) runs are not locked.

Example:
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> with run_lock(run) as held_here:
    ...     with run_lock(run) as held_twice:  # a second trainer finds the run taken
    ...         (held_here, held_twice, lock_holder(run)["pid"] == os.getpid())
    (True, False, True)
    >>> (run / LOCK_FILE).exists(), lock_holder(run)
    (False, None)
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = "running.lock"


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[bool]:
    """Hold ``run_dir``'s lock for the ``with`` block: yields ``True``, or ``False`` (holding
    nothing) when another process holds it. The lock file is removed when the block ends."""
    if fcntl is None:
        yield True
        return
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # its holder removed the file as we opened it: lock the one now at the path
    try:
        holder = {"host": socket.gethostname(), "pid": os.getpid()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        yield True
    finally:
        path.unlink(missing_ok=True)  # while still held, so nobody locks a file that is gone
        os.close(fd)


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock (``{"host", "pid"}``), or ``None`` when nobody does."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 4096, 0) or b"{}") or {"host": "?", "pid": None}
            except ValueError:  # being written
                return {"host": "?", "pid": None}
        return None  # a leftover file nobody holds
    finally:
        os.close(fd)


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``lock_holder``'s answer for a message: ``"pid 123 on node7"`` (``?`` for what it does not say).

    Example:
        >>> describe_holder({"host": "node7", "pid": 123}), describe_holder({"host": "?", "pid": None})
        ('pid 123 on node7', 'pid ? on ?')
    """
    holder = holder or {}
    pid, host = holder.get("pid"), holder.get("host")
    return f"pid {'?' if pid is None else pid} on {host or '?'}"
