"""Small file helpers: atomic writes (temporary name + rename) and hashing."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from lmcli.runtime.errors import OutputError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(describe_os_error(f"cannot write {path}", e)) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def describe_os_error(what: str, e: OSError) -> str:
    """One line for an OSError, naming the common causes plainly."""
    if e.errno == errno.ENOSPC:
        return f"{what}: no space left on device"
    return f"{what}: {e.strerror or e}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
