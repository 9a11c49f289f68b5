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
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from mailpipe.common.small_files import write_all
from mailpipe.spool.layout import BOOT_KEY
from mailpipe.spool.recycle import unlink_if_present


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


def write_json_durably(path: Path, data: dict[str, Any], tmp_dir: Path) -> None:
    """Write, fsync, rename: readers see the old or the new file, never half."""
    tmp = tmp_dir / f"{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, ensure_ascii=False, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        unlink_if_present(tmp)  # a full disk must not also leave half a file behind
        raise


def write_descriptor(descriptor: int, data: bytes | bytearray | memoryview, reused: bool, fsync: bool) -> None:
    """All of ``data`` into an open file from its start; a reused (recycled)
    file is cut to it, and optionally fsynced. The caller closes it."""
    write_all(descriptor, data)
    if reused:
        os.ftruncate(descriptor, len(data))
    if fsync:
        os.fsync(descriptor)


def encode_commit_mark(metadata: dict[str, Any], boot: str | None) -> bytes:
    """A commit mark's bytes: the message's metadata, plus the boot it was
    written in when the batch is made durable by ``syncfs`` (spool.check)."""
    mark = {**metadata, BOOT_KEY: boot} if boot else metadata
    return json.dumps(mark, ensure_ascii=False, sort_keys=True).encode("utf-8")


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
