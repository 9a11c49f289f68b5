"""Spool files are reused, not created and deleted for every message.

Every message passes through the spool as two files (its bytes and its
metadata) that live for a few milliseconds. Creating an inode and freeing
it again is metadata work that every sync must write back, and on ext4
without a journal (the development machine) a create shortly after many
deletes also skips the recently freed inodes one by one, which perf showed
as the largest kernel cost of a busy spool. Measured there (syncfs every
20 messages): create + write + unlink cost 88 µs a message, renaming a
used file back into service and overwriting it 21 µs.

So a delivered message's small files are renamed into ``spool/free/``
(at most ``FREE_LIMIT`` files of at most ``RECYCLE_MAX_BYTES``; anything
else is deleted), and a new message takes one from there: rename into
``tmp/``, overwrite from offset 0, cut to the new length before it is
synced. A file in ``free/`` belongs to no message: recovery at start may
trim the directory, and a crash anywhere loses nothing that was
acknowledged. Several processes (``serve --workers``) share the
directory safely: a rename either wins a file or finds it gone.

On a disk below the spool's reserve (mailpipe.spool.disk_space) a released file
is deleted, not kept: the space goes back to the filesystem at once.

Note for operators: the bytes of delivered messages stay in
``spool/free/`` until the file is reused (at most ``FREE_LIMIT`` ×
``RECYCLE_MAX_BYTES`` of disk).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

#: Files larger than this are deleted, not kept: overwriting a big file
#: with a small message would cost a truncate larger than the create saved.
RECYCLE_MAX_BYTES = 64 * 1024
#: At most this many files wait in ``free/``.
FREE_LIMIT = 4096
#: Seconds before ``free/`` is listed again after it looked empty or full.
RELIST_SECONDS = 0.02


class FileRecycler:
    """Hands out writable files (new or reused) and takes back used ones."""

    def __init__(self, directory: Path, keeping: Callable[[], bool] = lambda: True) -> None:
        self.directory = directory
        self._keeping = keeping  # False while the disk is short of space
        self._directory_text = str(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._count = 0  # files in free/ as last seen, plus what this process added
        self._listed_at = -RELIST_SECONDS
        self._last_listing_useful = True

    def open_new(self, path: str | Path) -> tuple[int, bool]:
        """A descriptor open for writing at offset 0 on a file now named ``path``,
        and whether it was reused (then it may hold old bytes past what is
        written: cut it with ``ftruncate`` before syncing)."""
        while (name := self._take_name()) is not None:
            try:
                os.rename(f"{self._directory_text}/{name}", path)
            except FileNotFoundError:
                continue  # another process took it first
            try:
                return os.open(path, os.O_WRONLY | os.O_CLOEXEC), True
            except OSError:
                unlink_if_present(path)
                break
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640), False

    def release(self, path: str | Path) -> None:
        """``path`` is no longer needed: keep it for reuse, or delete it.
        A file with another name elsewhere (the filesystem sink hard-links
        spooled messages into the archive) is only unlinked: its bytes are
        someone else's now."""
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return
        if status.st_nlink == 1 and status.st_size <= RECYCLE_MAX_BYTES and self._keeping() and self._has_room():
            name = secrets.token_hex(8)
            try:
                os.rename(path, f"{self._directory_text}/{name}")
            except FileNotFoundError:
                return
            except OSError:
                pass
            else:
                with self._lock:
                    self._names.append(name)
                return
        unlink_if_present(path)

    def trim(self) -> None:
        """Keep at most ``FREE_LIMIT`` files (at start, when nothing else runs)."""
        names = os.listdir(self.directory)
        for name in names[FREE_LIMIT:]:
            (self.directory / name).unlink(missing_ok=True)

    # --- the listing, shared by this process's threads -----------------------

    def _take_name(self) -> str | None:
        with self._lock:
            if not self._names and (self._last_listing_useful or self._listing_due()):
                self._relist()
                self._last_listing_useful = bool(self._names)
            if not self._names:
                return None
            self._count = max(0, self._count - 1)
            return self._names.pop()

    def _has_room(self) -> bool:
        with self._lock:
            if self._count >= FREE_LIMIT and self._listing_due():
                self._relist()  # other processes may have taken some
            if self._count >= FREE_LIMIT:
                return False
            self._count += 1
            return True

    def _listing_due(self) -> bool:
        return time.monotonic() - self._listed_at >= RELIST_SECONDS

    def _relist(self) -> None:
        self._listed_at = time.monotonic()
        try:
            self._names = os.listdir(self.directory)
        except FileNotFoundError:
            self._names = []
        self._count = len(self._names)


def unlink_if_present(path: str | Path) -> None:
    """``os.unlink``, where a file already gone is no error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
