"""Making many files durable at once.

``syncfs(fd)`` (Linux ≥ 2.6.39; errors reported since 5.8) writes back and
waits for every dirty page and inode of one filesystem: one call makes a
whole batch of files and renames durable, where per-file ``fsync`` would
cost a journal commit each. Where it is missing, callers fall back to
per-file fsync.

``syncfs`` also writes back whatever else is dirty on that filesystem: put
the data directory on its own filesystem if other heavy writers share it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Callable


def _load_syncfs() -> Callable[[int], None] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(descriptor: int) -> None:
        if function(descriptor) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs failed: {os.strerror(error)}")

    return syncfs


SYNCFS = _load_syncfs()


def sync_filesystem_of(path: Path, syncfs: Callable[[int], None] | None = SYNCFS) -> None:
    """syncfs() the filesystem holding ``path`` (which must support it)."""
    assert syncfs is not None
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(descriptor)
    finally:
        os.close(descriptor)
