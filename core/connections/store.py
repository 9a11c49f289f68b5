"""The state store: connections, live status, accounts, tokens, the audit log.

One interface (``SQLStore``: the connection methods plus plain
``execute/query/transaction`` SQL helpers) above two backends: the embedded
SQLite file in the data dir (the default) and PostgreSQL
(mailpipe.connections.store_postgres, ``[state] url = "postgresql://…"``) for several
nodes sharing one control plane. Both run the same ``MIGRATIONS``, written
in portable SQL with ``?`` placeholders; the PostgreSQL backend translates
the few differences in one place (``store_postgres.translate``).

The schema version is a row in ``schema_version``; a store whose schema is
newer than this code's migrations is refused (``SchemaTooNew``) instead of
being written to by code that does not know its tables.

Every change to a connection bumps a revision number; a running server
notices a change made elsewhere (the CLI, another node) through
``wait_for_change``: SQLite polls the integer, PostgreSQL is woken by
LISTEN/NOTIFY.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from mailpipe.errors import MailpipeError

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
        "user" TEXT NOT NULL,
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
    # 3: live status reported by the running server (mailpipe.connections.live_status)
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
    # 4: a collector's progress through its mailbox (mailpipe.connections.live_status, mailpipe.connections.live_progress)
    """
    CREATE TABLE live_progress (
        connection_id TEXT PRIMARY KEY,
        remaining INTEGER NOT NULL,
        rate DOUBLE PRECISION,
        measured_at TEXT NOT NULL
    )
    """,
    # 5: collector leases (mailpipe.connections.leases): which node collects a
    # connection, until when (epoch milliseconds, the holder's clock), and the
    # fencing token, raised by every acquisition of an expired or free lease. A
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
    # 6: the nodes sharing the store, each seen at its last lease round
    # (mailpipe.connections.leases: a node takes at most its share of the
    # collectors, so a node that joins gets some of them).
    """
    CREATE TABLE nodes (
        holder TEXT PRIMARY KEY,
        home TEXT NOT NULL,
        seen_at BIGINT NOT NULL
    )
    """,
)


#: How often the SQLite backend reads the revision while waiting for a change.
POLL_SECONDS = 0.2

SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)


class StateStoreError(MailpipeError):
    """The state store cannot be used as configured (unreachable, or not this code's schema)."""


class SchemaTooNew(StateStoreError):
    pass


class Cursor(Protocol):
    """What a statement run inside ``transaction`` returns (a DB-API cursor)."""

    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """The handle ``transaction(work)`` gives ``work``: ``?`` placeholders;
    rows are indexable by position and by column name."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor: ...


@dataclass(frozen=True)
class Migrated:
    before: int
    after: int
    latest: int


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
    def wait_for_change(self, seen: int, timeout: float) -> int: ...
    def get_state(self, key: str) -> Any: ...
    def set_state(self, key: str, value: Any) -> None: ...


class SQLStore:
    """The store's methods, written once over four primitives a backend
    provides: ``_begin`` (a write transaction, serialised with other
    writers), ``_read`` (rows as dicts), ``_bump_revision`` and ``close``."""

    #: Where this store lives, for messages (a path or a URL without password).
    location: str = ""

    # --- what a backend provides ----------------------------------------------

    def _begin(self) -> contextlib.AbstractContextManager[Transaction]:
        raise NotImplementedError

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _bump_revision(self, db: Transaction) -> None:
        db.execute("UPDATE revision SET value = value + 1 WHERE id = 1")

    def _lock_schema(self, db: Transaction) -> None:
        """Keep other nodes out while this one migrates (PostgreSQL; SQLite's write lock already does)."""

    def _serialise(self, db: Transaction) -> None:
        """Make ``transaction`` run alone among writers, as SQLite's BEGIN IMMEDIATE does,
        so that a read-check-write in it means the same on every backend."""

    def _legacy_version(self, db: Transaction) -> int:
        return 0

    def close(self) -> None:
        raise NotImplementedError

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """The revision, once it differs from ``seen`` or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            revision = self.revision()
            if revision != seen or time.monotonic() >= deadline:
                return revision
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    # --- schema -----------------------------------------------------------------

    def migrate(self) -> Migrated:
        """Apply the migrations this store lacks, each in its own transaction
        (idempotent); refuse a schema newer than this code."""
        latest = len(MIGRATIONS)
        before = self._schema_version(latest)
        version = before
        while version < latest:
            with self._begin() as db:
                self._lock_schema(db)
                version = self._current_version(db)  # another node may have migrated meanwhile
                if version < latest:
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            db.execute(statement)
                    version += 1
                    db.execute("UPDATE schema_version SET version = ? WHERE id = 1", (version,))
        return Migrated(before, version, latest)

    def schema_version(self) -> int:
        return self._schema_version(len(MIGRATIONS))

    def _schema_version(self, latest: int) -> int:
        with self._begin() as db:
            self._lock_schema(db)
            db.execute(SCHEMA_TABLE)
            version = self._current_version(db)
        if version > latest:
            raise SchemaTooNew(
                f"the state store {self.location} has schema version {version}, newer than this mailpipe "
                f"knows (version {latest}): a newer mailpipe has migrated it; upgrade mailpipe on this "
                "node to that release (never point an older release at a migrated store)"
            )
        return version

    def _current_version(self, db: Transaction) -> int:
        found = db.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
        if found is not None:
            return int(found[0])
        version = self._legacy_version(db)
        db.execute("INSERT INTO schema_version (id, version) VALUES (1, ?)", (version,))
        return version

    # --- connections ------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self._begin() as db:
            count = db.execute(sql, params).rowcount
            if count:
                self._bump_revision(db)
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
        found = self._read("SELECT * FROM connections WHERE id = ?", (connection_id,))
        return _row(found[0]) if found else None

    def list(self) -> list[StoredConnection]:
        return [_row(r) for r in self._read("SELECT * FROM connections ORDER BY created, id", ())]

    def revision(self) -> int:
        return int(self._read("SELECT value FROM revision WHERE id = 1", ())[0]["value"])

    def get_state(self, key: str) -> Any:
        found = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(found[0]["value"]) if found else None

    def set_state(self, key: str, value: Any) -> None:
        self.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # --- plain SQL for the accounts and audit tables (mailpipe.connections.accounts, mailpipe.connections.audit) ---

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write in its own transaction; the number of rows it changed.
        Accounts and the audit log do not bump the connections' revision."""
        with self._begin() as db:
            return int(db.execute(sql, params).rowcount)

    def transaction(self, work: Callable[[Transaction], bool]) -> None:
        """Run ``work`` in one write transaction, alone among the store's
        multi-statement writers (on every node); it returns True when it
        changed a connection row (the revision is bumped then)."""
        with self._begin() as db:
            self._serialise(db)
            if work(db):
                self._bump_revision(db)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self._read(sql, params)


class SQLiteStore(SQLStore):
    """Thread-safe SQLite store (one connection, one lock, WAL journal)."""

    def __init__(self, path: Path, migrate: bool = True) -> None:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if migrate:
            self.migrate()

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Transaction]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

    def _legacy_version(self, db: Transaction) -> int:
        # Before the schema_version table, SQLite kept the version in its header.
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


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


def _row(found: Any) -> StoredConnection:
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
