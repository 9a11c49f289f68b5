"""Connection and state storage: SQLite in the data dir, behind a small interface.

The interface (``ConnectionStore``) is what the service and the server use;
the SQLite class is the embedded default. A distributed deployment swaps in
a key-value store (NATS JetStream buckets) with the same methods.

Every change bumps a revision number so a running server notices an edit
made by the CLI in another process by polling one integer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

MIGRATIONS: tuple[str, ...] = (
    # 1: connections, a revision counter and collector state
    """
    CREATE TABLE connections (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        description TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 0,
        settings TEXT NOT NULL,
        address TEXT UNIQUE,
        status TEXT NOT NULL DEFAULT 'untested',
        status_error TEXT NOT NULL DEFAULT '',
        status_time TEXT,
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    );
    CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
    INSERT INTO revision (id, value) VALUES (1, 0);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: operator accounts, bearer tokens (hashed) and the append-only audit log
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        last_used TEXT
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        recorded_at TEXT NOT NULL,
        actor TEXT NOT NULL,
        remote TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        connection_id TEXT,
        before TEXT,
        after TEXT
    );
    CREATE INDEX audit_connection ON audit (connection_id, seq)
    """,
    # 3: live status reported by the running server (mailpipe.live_status)
    """
    CREATE TABLE live (
        connection_id TEXT PRIMARY KEY,
        last_message_at TEXT,
        last_error TEXT NOT NULL DEFAULT '',
        last_error_at TEXT
    );
    CREATE TABLE live_archived (
        connection_id TEXT NOT NULL,
        hour TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (connection_id, hour)
    )
    """,
    # 4: collector leases (mailpipe.leases): which node collects a connection,
    # until when (epoch milliseconds, the holder's clock), and the fencing
    # token, raised by every acquisition of an expired or free lease. A
    # released lease keeps its row (expires_at 0) so the token never goes back.
    """
    CREATE TABLE leases (
        connection_id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        home TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        token BIGINT NOT NULL
    );
    CREATE INDEX leases_holder ON leases (holder)
    """,
)


@dataclass
class StoredConnection:
    """A row as stored: secret settings still encrypted."""

    id: str
    type: str
    description: str
    enabled: bool
    settings: dict[str, Any]
    address: str | None
    status: str
    status_error: str
    status_time: str | None
    created: str
    updated: str


class ConnectionStore(Protocol):
    def insert(self, row: StoredConnection) -> None: ...
    def update(self, row: StoredConnection) -> None: ...
    def delete(self, connection_id: str) -> bool: ...
    def get(self, connection_id: str) -> StoredConnection | None: ...
    def list(self) -> list[StoredConnection]: ...
    def revision(self) -> int: ...
    def get_state(self, key: str) -> Any: ...
    def set_state(self, key: str, value: Any) -> None: ...


class SQLiteStore:
    """Thread-safe SQLite store (one connection, one lock, WAL journal)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._db.execute(sql, params).rowcount
                if count:
                    self._db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    def insert(self, row: StoredConnection) -> None:
        self._write(
            "INSERT INTO connections (id, type, description, enabled, settings, address, status,"
            " status_error, status_time, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            _params(row),
        )

    def update(self, row: StoredConnection) -> None:
        self._write(
            "UPDATE connections SET type=?, description=?, enabled=?, settings=?, address=?,"
            " status=?, status_error=?, status_time=?, created=?, updated=? WHERE id=?",
            _params(row)[1:] + (row.id,),
        )

    def delete(self, connection_id: str) -> bool:
        return self._write("DELETE FROM connections WHERE id = ?", (connection_id,)) > 0

    def get(self, connection_id: str) -> StoredConnection | None:
        with self._lock:
            found = self._db.execute(
                "SELECT * FROM connections WHERE id = ?", (connection_id,)
            ).fetchone()
        return _row(found) if found else None

    def list(self) -> list[StoredConnection]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM connections ORDER BY created, id").fetchall()
        return [_row(r) for r in rows]

    def revision(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM revision WHERE id = 1").fetchone()[0])

    def get_state(self, key: str) -> Any:
        with self._lock:
            found = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else None

    def set_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )


    # --- plain SQL for the accounts and audit tables (mailpipe.accounts, mailpipe.audit) ---

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write in its own transaction; the number of rows it changed.
        Accounts and the audit log do not bump the connections' revision."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._db.execute(sql, params).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    def transaction(self, work: Callable[[sqlite3.Connection], bool]) -> None:
        """Run ``work`` in one write transaction; it returns True when it
        changed a connection row (the revision is bumped then)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if work(self._db):
                    self._db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]


def _params(row: StoredConnection) -> tuple[Any, ...]:
    return (
        row.id,
        row.type,
        row.description,
        int(row.enabled),
        json.dumps(row.settings, sort_keys=True),
        row.address,
        row.status,
        row.status_error,
        row.status_time,
        row.created,
        row.updated,
    )


def _row(found: sqlite3.Row) -> StoredConnection:
    return StoredConnection(
        id=found["id"],
        type=found["type"],
        description=found["description"],
        enabled=bool(found["enabled"]),
        settings=json.loads(found["settings"]),
        address=found["address"],
        status=found["status"],
        status_error=found["status_error"],
        status_time=found["status_time"],
        created=found["created"],
        updated=found["updated"],
    )
