"""Atomic file writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["make_dirs", "write_atomic"]


def make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and any missing parents with ``mode`` (``Path.mkdir(parents=True)``
    would give the parents the default mode, which is wrong for key directories)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created concurrently: fine
            directory.mkdir(mode=mode)


def write_atomic(path: Path, data: bytes, *, mode: int, dir_mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and
    ``os.replace``. The temporary file is created 0600 (mkstemp uses ``os.open`` with
    0o600 and O_EXCL), so secret bytes are never readable by others, then set to ``mode``."""
    make_dirs(path.parent, dir_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # fchmod is not masked by the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable, so a crash cannot bring back the old file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
