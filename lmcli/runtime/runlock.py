"""One job per run dir: an exclusive lock on RUN_DIR/.lock, held for the life of `train`.

The lock is an fcntl lock, so the kernel drops it when its process dies, SIGKILL included; the file
also records the holder's pid and host for the error message. A lock file left by a dead process is
simply taken over.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from lmcli.runtime.errors import LockError, OutputError
from lmcli.runtime.fileio import describe_os_error

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(describe_os_error(f"cannot create {self.path}", e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise LockError(f"{self.path.parent} is in use by {holder}; wait for it to finish or use "
                            "another --run-dir") from None
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            self.release()
            raise OutputError(describe_os_error(f"cannot write {self.path}", e)) from None
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
