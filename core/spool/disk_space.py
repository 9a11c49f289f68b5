"""Free space on the spool's filesystem: refuse new mail before the disk is full.

Why a reserve: when new mail is refused the spool must still record its
progress — delivery state beside each message, collector checkpoints and
connection status in the state database, commit marks of what is already
being received. A disk filled to its last block stops that too. So intake
(SMTP and the IMAP collectors, through the group committer) is refused while
the free space on the spool's filesystem is below ``[spool] min_free_bytes``
(default: 1 % of the filesystem, at most 256 MiB): SMTP answers
``452 4.3.1`` (the sender retries), collectors pause without acting on
anything at the server. A real ``ENOSPC``/``EDQUOT`` (a quota is invisible
to ``statvfs``) refuses intake for a few seconds too.

What the operator sees: one log line when the disk becomes full (repeated at
most every ``LOG_EVERY_SECONDS``) and one when space returns; the status of
each connection whose mail was refused (``connections show``: ``failed — disk
full: ...``, back to ``ok`` with its next stored message); and
:meth:`DiskSpace.reason` (``Spool.readiness()``) for a readiness probe.

``statvfs`` costs a system call: its answer is kept for ``CHECK_SECONDS``.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("mailpipe.spool")

DEFAULT_RESERVE_FRACTION = 0.01
DEFAULT_RESERVE_CAP = 256 * 1024 * 1024
CHECK_SECONDS = 1.0
#: After a write failed for lack of space, intake stays refused this long
#: even if statvfs shows room (quotas, space taken back by another writer).
FAILURE_HOLD_SECONDS = 5.0
LOG_EVERY_SECONDS = 60.0
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
STATUS_PREFIX = "disk full"

#: ``(connection id, error or None)``: records a connection's live status
#: (blocking; see :func:`mailpipe.connections.service.store_status_reporter`).
StatusReporter = Callable[[str, "str | None"], None]


class SpoolFull(OSError):
    """Intake refused: the spool's filesystem is (nearly) full."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ENOSPC, reason)

    def __str__(self) -> str:
        return str(self.strerror)


def storage_full(error: BaseException) -> bool:
    """Whether ``error`` means "no space left" (file system, quota or SQLite)."""
    if isinstance(error, OSError):
        return error.errno in FULL_ERRNOS
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(error)
    return False


def default_reserve(total_bytes: int) -> int:
    return min(DEFAULT_RESERVE_CAP, int(total_bytes * DEFAULT_RESERVE_FRACTION))


class DiskSpace:
    """Watches one filesystem: is there room to take new mail?"""

    def __init__(self, path: Path, min_free_bytes: int | None = None) -> None:
        self.path = path
        self._configured = min_free_bytes
        self._lock = threading.Lock()
        self._checked_at = -CHECK_SECONDS
        self._free = 0
        self._total = 0
        self._failure = ""
        self._failed_at = -FAILURE_HOLD_SECONDS
        self._full_since: float | None = None
        self._logged_at = -LOG_EVERY_SECONDS
        self.report_status: StatusReporter | None = None
        self._refused: set[str] = set()  # connections whose status says "disk full" (this process)
        self._seen: set[str] = set()  # connections that stored mail in this process

    @property
    def reserve(self) -> int:
        self._measure()
        if self._configured is not None:
            return self._configured
        return default_reserve(self._total)

    def low(self) -> bool:
        """Below the reserve (measured at most once a second; nothing logged)."""
        self._measure()
        return self._free < self.reserve

    def reason(self) -> str | None:
        """Why new mail cannot be taken now (a sentence starting "disk full"), or None."""
        self._measure()
        now = time.monotonic()
        reserve = self.reserve
        reason: str | None = None
        if self._free < reserve or (reserve == 0 and self._free == 0):
            reason = (
                f"{STATUS_PREFIX}: {_mib(self._free)} free on the spool's filesystem ({self.path}), "
                f"below the reserve of {_mib(reserve)} ([spool] min_free_bytes); new mail is refused until "
                "space is freed"
            )
        elif now - self._failed_at < FAILURE_HOLD_SECONDS:
            reason = f"{STATUS_PREFIX}: {self._failure}"
        self._track(reason, now)
        return reason

    def check(self) -> None:
        """Raise :class:`SpoolFull` while new mail cannot be taken."""
        reason = self.reason()
        if reason is not None:
            raise SpoolFull(reason)

    def note_failure(self, error: BaseException) -> None:
        """A write failed for lack of space: refuse intake for a moment and say so."""
        if not storage_full(error):
            return
        self._failed_at = time.monotonic()
        self._checked_at = -CHECK_SECONDS  # measure again at the next check
        self._failure = (
            f"a write to the spool's filesystem ({self.path}) failed: {_error_text(error)}; "
            "new mail is refused until space is freed"
        )
        self.reason()

    # --- connection status ----------------------------------------------------

    def refused_for(self, connection_id: str | None, reason: str) -> bool:
        """Mark a connection refused; True if its status must be written now."""
        if not connection_id or self.report_status is None or connection_id in self._refused:
            return False
        self._refused.add(connection_id)
        return True

    def accepted_for(self, connection_id: str | None) -> bool:
        """A connection's mail is stored again; True if its status must be
        written now: after a refusal, and once per process (a "disk full"
        status recorded before a restart is taken back too)."""
        if not connection_id or self.report_status is None:
            return False
        if connection_id not in self._refused and connection_id in self._seen:
            return False
        self._refused.discard(connection_id)
        self._seen.add(connection_id)
        return True

    def write_status(self, connection_id: str, error: str | None) -> None:
        """Blocking (the state database): call it from a worker thread."""
        if self.report_status is None:
            return
        try:
            self.report_status(connection_id, error)
        except Exception as failure:  # the database may be on the full disk too
            log.warning(
                "could not record a connection's disk-full status",
                extra={"connection": connection_id, "error": str(failure)},
            )

    # --- internals ---------------------------------------------------------------

    def _measure(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_SECONDS:
            return
        with self._lock:
            try:
                stats = os.statvfs(self.path)
            except OSError:
                return
            self._free = stats.f_bavail * stats.f_frsize
            self._total = stats.f_blocks * stats.f_frsize
            self._checked_at = now

    def _track(self, reason: str | None, now: float) -> None:
        """Log the change, and the condition at most every LOG_EVERY_SECONDS."""
        if reason is None:
            if self._full_since is not None:
                self._full_since = None
                log.warning(
                    "disk space available again; accepting new mail",
                    extra={"free_bytes": self._free, "reserve_bytes": self.reserve, "path": str(self.path)},
                )
            return
        if self._full_since is None:
            self._full_since = now
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.error(
                f"{reason} (SMTP answers 452 4.3.1, IMAP collection is paused)",
                extra={"free_bytes": self._free, "reserve_bytes": self.reserve, "path": str(self.path)},
            )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _error_text(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return os.strerror(error.errno)
    return str(error)
