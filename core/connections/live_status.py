"""Live status: what the running server sees per connection, in the state store.

The SMTP intake and the collectors note each message received or collected,
the pipeline notes each message archived, and both note failures (a
collector that cannot log in, a required sink that keeps failing) and
recoveries. Notes go to an in-memory aggregator (``LIVE``, one per process)
that a thread flushes into the state store once a second, in one
transaction: busy intake costs at most one store write a second, not one per
message.

Status rules (why each source only takes back its own red):

- a collector's failure turns the connection ``failed`` with its error; a
  successful session turns it ``ok`` unless a sink's failure is what made it
  red (the collector working says nothing about the sink);
- a required sink's failure for the connection's mail turns it ``failed``
  with the sink's error (error text starts with ``sink``); archiving its mail
  again turns it ``ok`` unless a collector's failure made it red;
- a status ``testing`` (an operator's test running) is never overwritten,
  nor taken back a disk-full status (mailpipe.spool.disk_space takes it back);
- these changes are logged, not audited: they are not an operator's change.

Collectors also report their progress through a mailbox (messages left,
collected): a ``RateWindow`` per connection (mailpipe.connections.live_progress) kept
here, its figures written into ``live_progress`` in the same flush while
there is something to say (a new report, or a rate still decaying), then
no more until the next report.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal

from mailpipe.spool.disk_space import STATUS_PREFIX as DISK_FULL_PREFIX
from mailpipe.common.timestamps import utc_now
from mailpipe.connections.leases import collecting_node
from mailpipe.connections.live_progress import RateWindow, progress_fields

log = logging.getLogger("mailpipe.live")

FLUSH_SECONDS = 1.0
#: Hour buckets kept for ``archived_24h`` (older ones are dropped).
KEEP_HOURS = 48
#: State key counting the aggregator's flushes (how tests see the write rate).
WRITES_KEY = "live:writes"
SINK_ERROR_PREFIX = "sink "

Source = Literal["collector", "sink"]


@dataclass
class _Pending:
    last_message_at: str | None = None
    archived: dict[str, int] = field(default_factory=dict)  # hour → count
    status: tuple[Source, str | None] | None = None  # (source, error or None for ok)


@dataclass
class _Progress:
    window: RateWindow
    remaining: int = 0
    #: (remaining, rate) as last written; None before the first write.
    written: tuple[int, float | None] | None = None


#: One ``live_progress`` row to write: connection, remaining, rate.
ProgressRow = tuple[str, int, float | None]


def hour_bucket(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H")


class LiveStatus:
    """Per-process aggregator; no-op until ``attach`` gives it a store."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._progress: dict[str, _Progress] = {}
        self._store: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- notes (cheap; called from the event loop) ------------------------------

    def message_received(self, connection_id: str | None) -> None:
        if connection_id and self._store is not None:
            with self._lock:
                self._pending.setdefault(connection_id, _Pending()).last_message_at = utc_now()

    def archived(self, connection_id: str | None, count: int = 1) -> None:
        if not connection_id or self._store is None:
            return
        hour = hour_bucket(datetime.now(timezone.utc))
        with self._lock:
            pending = self._pending.setdefault(connection_id, _Pending())
            pending.archived[hour] = pending.archived.get(hour, 0) + count
            pending.status = ("sink", None)

    def failed(self, connection_id: str | None, source: Source, error: str) -> None:
        if connection_id and self._store is not None:
            with self._lock:
                self._pending.setdefault(connection_id, _Pending()).status = (source, error)

    def ok(self, connection_id: str | None, source: Source) -> None:
        if connection_id and self._store is not None:
            with self._lock:
                self._pending.setdefault(connection_id, _Pending()).status = (source, None)

    def progress(self, connection_id: str | None, remaining: int, collected: int = 0) -> None:
        """A collector's report: ``remaining`` messages still on the server,
        ``collected`` since its last report."""
        if not connection_id or self._store is None:
            return
        with self._lock:
            entry = self._progress.get(connection_id)
            if entry is None:
                entry = self._progress[connection_id] = _Progress(RateWindow(clock=self._clock))
            entry.window.note(max(0, collected))
            entry.remaining = max(0, remaining)

    def _progress_rows(self) -> list[ProgressRow]:
        """What to write this flush: figures that changed, and a rate while it
        is present (rewritten every flush: it decays as the window slides, and
        a reader takes a rate not rewritten lately for a stopped writer's)."""
        rows = []
        for connection_id, entry in self._progress.items():
            rate = entry.window.rate()
            if rate is not None or entry.written != (entry.remaining, rate):
                rows.append((connection_id, entry.remaining, rate))
        return rows

    def _progress_written(self, rows: list[ProgressRow]) -> None:
        for connection_id, remaining, rate in rows:
            self._progress[connection_id].written = (remaining, rate)

    # --- flushing --------------------------------------------------------------------

    def attach(self, store: Any) -> None:
        """Start flushing into ``store`` (the server, a worker, the pipeline process)."""
        if self._store is store:
            return
        self.detach()
        with self._lock:
            for entry in self._progress.values():
                entry.written = None  # a store that may not hold the figures yet
        self._store = store
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mailpipe-live-status", daemon=True)
        self._thread.start()

    def detach(self, store: Any = None) -> None:
        """Flush what is pending and stop (before the store is closed)."""
        if self._store is None or (store is not None and store is not self._store):
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        self._store, self._thread = None, None

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            progress = self._progress_rows()
        store = self._store
        if not (pending or progress) or store is None:
            return
        changes: list[tuple[str, str, str]] = []

        def write(db: sqlite3.Connection) -> bool:
            _write_progress(db, progress)
            return _write(db, pending, changes)

        try:
            store.transaction(write)
        except Exception as error:  # the store is busy or its disk full: try the notes again
            log.warning("could not record live status", extra={"error": str(error)})
            with self._lock:
                for connection_id, note in pending.items():
                    _merge(self._pending.setdefault(connection_id, _Pending()), note)
            return
        with self._lock:
            self._progress_written(progress)
        for connection_id, status, error in changes:
            log_status = log.warning if status == "failed" else log.info
            log_status(
                f"connection status {status} (reported by the server)",
                extra={"connection": connection_id, "status": status, "error": error},
            )


def _merge(into: _Pending, older: _Pending) -> None:
    into.last_message_at = into.last_message_at or older.last_message_at
    for hour, count in older.archived.items():
        into.archived[hour] = into.archived.get(hour, 0) + count
    into.status = into.status or older.status


def _write(db: sqlite3.Connection, pending: dict[str, _Pending], changes: list[tuple[str, str, str]]) -> bool:
    now = utc_now()
    for connection_id, note in pending.items():
        db.execute("INSERT INTO live (connection_id) VALUES (?) ON CONFLICT DO NOTHING", (connection_id,))
        if note.last_message_at:
            db.execute(
                "UPDATE live SET last_message_at = ? WHERE connection_id = ?", (note.last_message_at, connection_id)
            )
        for hour, count in note.archived.items():
            db.execute(
                "INSERT INTO live_archived (connection_id, hour, count) VALUES (?, ?, ?)"
                " ON CONFLICT(connection_id, hour) DO UPDATE SET count = live_archived.count + excluded.count",
                (connection_id, hour, count),
            )
        if note.status is not None:
            source, error = note.status
            if error:
                db.execute(
                    "UPDATE live SET last_error = ?, last_error_at = ? WHERE connection_id = ?",
                    (error, now, connection_id),
                )
            change = _apply_status(db, connection_id, source, error, now)
            if change:
                changes.append(change)
    oldest = hour_bucket(datetime.now(timezone.utc) - timedelta(hours=KEEP_HOURS))
    db.execute("DELETE FROM live_archived WHERE hour < ?", (oldest,))
    db.execute(
        "INSERT INTO state (key, value) VALUES (?, '1')"
        " ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(state.value AS INTEGER) + 1 AS TEXT)",
        (WRITES_KEY,),
    )
    return bool(changes)


def _write_progress(db: sqlite3.Connection, rows: list[ProgressRow]) -> None:
    now = utc_now()
    for connection_id, remaining, rate in rows:
        db.execute(
            "INSERT INTO live_progress (connection_id, remaining, rate, measured_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (connection_id) DO UPDATE SET remaining = excluded.remaining,"
            " rate = excluded.rate, measured_at = excluded.measured_at",
            (connection_id, remaining, rate, now),
        )


def _apply_status(
    db: sqlite3.Connection, connection_id: str, source: Source, error: str | None, now: str
) -> tuple[str, str, str] | None:
    row = db.execute("SELECT status, status_error FROM connections WHERE id = ?", (connection_id,)).fetchone()
    if row is None:
        return None
    status, current_error = row[0], row[1] or ""
    if status == "testing":
        return None  # an operator's test decides
    if error is not None:
        wanted = ("failed", error)
    else:
        red_from_sink = current_error.startswith(SINK_ERROR_PREFIX)
        if status == "failed" and current_error.startswith(DISK_FULL_PREFIX):
            return None  # mailpipe.spool.disk_space takes back its own status when space is free
        if status == "ok" or (status == "failed" and red_from_sink != (source == "sink")):
            return None  # green already, or red for a reason this source cannot judge
        wanted = ("ok", "")
    if (status, current_error) == wanted:
        return None
    db.execute(
        "UPDATE connections SET status = ?, status_error = ?, status_time = ? WHERE id = ?",
        (*wanted, now, connection_id),
    )
    return (connection_id, *wanted)


def live_fields(store: Any, connection_id: str, collecting: bool = True) -> dict[str, Any]:
    """``last_message_at``, ``archived_24h``, ``last_error`` and the collector's
    progress (``remaining``, ``rate``, ``time_left``) for one connection.

    ``collecting`` False (the connection is disabled): no collector runs, so
    its last report (say "3,000 left" from a pass cut short by the disable)
    is not shown as if it were current; the progress fields are absent, and
    so is ``collected_by`` (otherwise the node holding its lease now)."""
    since = hour_bucket(datetime.now(timezone.utc) - timedelta(hours=23))
    try:
        rows = store.query("SELECT last_message_at, last_error FROM live WHERE connection_id = ?", (connection_id,))
        counted = store.query(
            "SELECT COALESCE(SUM(count), 0) AS n FROM live_archived WHERE connection_id = ? AND hour >= ?",
            (connection_id, since),
        )
        progress = store.query(
            "SELECT remaining, rate, measured_at FROM live_progress WHERE connection_id = ?", (connection_id,)
        )
        holder = collecting_node(store, connection_id) if collecting else None
    except sqlite3.OperationalError:  # an empty in-memory store (no state yet)
        rows, counted, progress, holder = [], [{"n": 0}], [], None
    found = rows[0] if rows else {}
    return {
        "last_message_at": found.get("last_message_at"),
        "archived_24h": int(counted[0]["n"]),
        "last_error": found.get("last_error") or "",
        **progress_fields(progress[0] if progress and collecting else None),
        "collected_by": holder,
    }


LIVE = LiveStatus()
