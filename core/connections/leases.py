"""Collector leases: each pull connection is collected by one node at a time.

Several ``mailpipe serve`` nodes share one state store. Before a node starts
a connection's collector it takes the connection's lease (a row in the
``leases`` table: holder, expiry, fencing token), renews it every third of
the lease, and cancels the collector as soon as a renewal fails or the
lease runs out. A node that dies stops renewing; another takes the lease
over once it has expired.

A node can also be paused (SIGSTOP, a VM frozen, a long GC) past its lease
and wake up still believing it collects. Fencing covers that: each
acquisition of a free or expired lease raises the connection's *fencing
token*, and every checkpoint write is made in one transaction with a check
that this node still holds the lease with that token; every action at the
source (delete, move, flag) is preceded by the same check. A woken node
therefore neither moves the checkpoint back nor deletes mail: its write is
refused with :class:`~mailpipe.errors.LeaseLost` and its collector stops.

The collectors are spread over the nodes: each node records itself in the
``nodes`` table at every renewal round and holds at most its share,
``ceil(connections / nodes alive)``; a node above it (one joined) hands the
excess over — cancels those collectors and releases their leases — and a
node takes a free lease only while below it.

Times are the holders' clocks (epoch milliseconds), so the nodes' clocks
must agree to well within a lease (NTP does that); the fencing token, not
the clock, is what keeps a stale node from writing.

The SQL is portable (``?`` placeholders, ``ON CONFLICT``, no engine-specific
functions) and goes through the store's ``execute``/``query``/``transaction``
helpers only, so it runs on every state-store backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import anyio
import anyio.to_thread

from mailpipe.errors import LeaseLost, leaf_errors

log = logging.getLogger("mailpipe.leases")

DEFAULT_LEASE_SECONDS = 30.0
#: Renewals per lease: renewed every third of it, so two may fail before it runs out.
RENEWALS_PER_LEASE = 3
#: Connection ids per renewing UPDATE (well below every engine's parameter limit).
RENEW_CHUNK = 500
#: A node waiting for a lease looks again this often at most (a released lease
#: is taken over this soon, whatever the lease's length).
RETRY_SECONDS_MAX = 5.0
#: A node's row in ``nodes`` is deleted once it has not been seen for this many leases.
FORGET_AFTER_LEASES = 100

_NODE_ID: str | None = None


def node_id() -> str:
    """This process's holder name: host, pid and a random part, stable for the process."""
    global _NODE_ID
    if _NODE_ID is None:
        _NODE_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    return _NODE_ID


def node_home(data_dir: Path) -> str:
    """Where this node lives: host and data_dir. Only one server runs per
    data_dir (its flock), so leases left by an earlier process with the same
    home belong to a process that is gone."""
    return f"{socket.gethostname()}:{data_dir.resolve()}"


class LeaseStore(Protocol):
    """The state store's plain-SQL helpers (mailpipe.connections.store) that leases use."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int: ...
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]: ...
    def transaction(self, work: Callable[[Any], bool]) -> None: ...


@dataclass
class Lease:
    """A lease this node holds (or held): ``expires_at`` in seconds on the node's clock."""

    connection_id: str
    holder: str
    token: int
    expires_at: float
    lost: bool = False
    #: Given up by this node to balance the collectors over the nodes (not lost).
    handed_over: bool = False

    def valid(self, now: float) -> bool:
        return not self.lost and now < self.expires_at


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class LeaseTable:
    """Acquire, renew, check and release leases, and write fenced state."""

    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        home: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.holder = holder
        self.home = home
        self.lease_seconds = lease_seconds
        self.clock = clock

    def acquire(self, connection_id: str) -> Lease | None:
        """Take the connection's lease if it is free or expired (a new fencing
        token), or renew it if this node holds it; None while another node does."""
        now = self.clock()
        expires = now + self.lease_seconds
        token: list[int] = []

        def work(db: Any) -> bool:
            # The row first (expired, token 0), so one UPDATE both creates and
            # takes over; under concurrency only one node's UPDATE matches.
            db.execute(
                "INSERT INTO leases (connection_id, holder, home, expires_at, token) VALUES (?, ?, ?, 0, 0)"
                " ON CONFLICT (connection_id) DO NOTHING",
                (connection_id, self.holder, self.home),
            )
            renewed = db.execute(
                "UPDATE leases SET expires_at = ? WHERE connection_id = ? AND holder = ? AND expires_at > ?",
                (_ms(expires), connection_id, self.holder, _ms(now)),
            ).rowcount
            if not renewed:
                taken = db.execute(
                    "UPDATE leases SET holder = ?, home = ?, expires_at = ?, token = token + 1"
                    " WHERE connection_id = ? AND expires_at <= ?",
                    (self.holder, self.home, _ms(expires), connection_id, _ms(now)),
                ).rowcount
                if not taken:
                    return False
            row = db.execute("SELECT token FROM leases WHERE connection_id = ?", (connection_id,)).fetchall()[0]
            token.append(int(_column(row, "token", 0)))
            return False  # no connection row changed: the revision stays

        self.store.transaction(work)
        if not token:
            return None
        return Lease(connection_id, self.holder, token[0], expires)

    def renew(self, lease: Lease) -> bool:
        """Extend a lease still held with the same token; False (and lost) once it is not."""
        self.renew_all([lease])
        return not lease.lost

    def renew_all(self, leases: list[Lease]) -> None:
        """Renew many leases of this node at once (a node renews every lease it
        holds in one transaction per round, however many mailboxes it collects);
        each one not renewed is marked lost."""
        now = self.clock()
        expires = now + self.lease_seconds
        renewed: set[tuple[str, int]] = set()

        def work(db: Any) -> bool:
            for start in range(0, len(leases), RENEW_CHUNK):
                ids = [lease.connection_id for lease in leases[start : start + RENEW_CHUNK]]
                marks = ", ".join("?" * len(ids))
                db.execute(
                    f"UPDATE leases SET expires_at = ? WHERE holder = ? AND expires_at > ? AND connection_id IN ({marks})",
                    (_ms(expires), self.holder, _ms(now), *ids),
                )
            rows = db.execute(
                "SELECT connection_id, token FROM leases WHERE holder = ? AND expires_at = ?",
                (self.holder, _ms(expires)),
            ).fetchall()
            renewed.update((str(_column(row, "connection_id", 0)), int(_column(row, "token", 1))) for row in rows)
            return False

        self.store.transaction(work)
        for lease in leases:
            if (lease.connection_id, lease.token) in renewed:
                lease.expires_at = expires
            else:
                lease.lost = True

    def holds(self, lease: Lease) -> bool:
        """Does this node still hold ``lease`` (same token, not expired) in the store?"""
        now = self.clock()
        if not lease.valid(now):
            return False
        rows = self.store.query(
            "SELECT token FROM leases WHERE connection_id = ? AND holder = ? AND token = ? AND expires_at > ?",
            (lease.connection_id, lease.holder, lease.token, _ms(now)),
        )
        if not rows:
            lease.lost = True
        return bool(rows)

    def release(self, lease: Lease) -> None:
        """Give the lease up now (a clean stop): another node need not wait for it to expire."""
        lease.lost = True
        self.store.execute(
            "UPDATE leases SET expires_at = 0 WHERE connection_id = ? AND holder = ? AND token = ?",
            (lease.connection_id, lease.holder, lease.token),
        )

    def release_left_behind(self) -> int:
        """Free the leases an earlier process of this node left (killed with
        SIGKILL, say), so a restarted single node collects at once instead of
        waiting for them to expire. Tokens still rise on the next acquisition.
        That process no longer counts as a node either."""
        self.store.execute("DELETE FROM nodes WHERE home = ? AND holder <> ?", (self.home, self.holder))
        return self.store.execute(
            "UPDATE leases SET expires_at = 0 WHERE home = ? AND holder <> ? AND expires_at > 0",
            (self.home, self.holder),
        )

    def heartbeat(self) -> int:
        """Record that this node is alive; the number of nodes alive (seen
        within one lease), this one included. Rows of nodes gone for many
        leases are deleted on the way."""
        now = _ms(self.clock())
        lease = _ms(self.lease_seconds)
        self.store.execute(
            "INSERT INTO nodes (holder, home, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at",
            (self.holder, self.home, now),
        )
        self.store.execute("DELETE FROM nodes WHERE seen_at < ?", (now - FORGET_AFTER_LEASES * lease,))
        rows = self.store.query("SELECT COUNT(*) AS alive FROM nodes WHERE seen_at > ?", (now - lease,))
        return max(1, int(rows[0]["alive"]))

    def leave(self) -> None:
        """This node stops (cleanly): the others stop counting it at once."""
        self.store.execute("DELETE FROM nodes WHERE holder = ?", (self.holder,))

    def set_state_fenced(self, lease: Lease, key: str, value: Any) -> None:
        """Write a collector's state only while ``lease`` is held with its token,
        checked in the same transaction; :class:`LeaseLost` otherwise."""
        now = self.clock()
        if not lease.valid(now):
            raise LeaseLost(self.lost_text(lease))

        def work(db: Any) -> bool:
            # An UPDATE, not a SELECT: it locks the lease row until the state
            # is written, so a takeover cannot slip in between (PostgreSQL).
            held = db.execute(
                "UPDATE leases SET token = token"
                " WHERE connection_id = ? AND holder = ? AND token = ? AND expires_at > ?",
                (lease.connection_id, lease.holder, lease.token, _ms(now)),
            ).rowcount
            if not held:
                lease.lost = True
                raise LeaseLost(self.lost_text(lease))
            db.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
            return False

        self.store.transaction(work)

    def taken_elsewhere(self) -> dict[str, float]:
        """Leases other nodes hold now: connection id → expiry (seconds). One
        read for every connection, so a node that waits costs one statement
        per round, not one per mailbox."""
        rows = self.store.query(
            "SELECT connection_id, expires_at FROM leases WHERE holder <> ? AND expires_at > ?",
            (self.holder, _ms(self.clock())),
        )
        return {str(row["connection_id"]): int(row["expires_at"]) / 1000 for row in rows}

    def current(self, connection_id: str) -> dict[str, Any] | None:
        """The lease row as stored (holder, expires_at in ms, token), or None."""
        rows = self.store.query(
            "SELECT connection_id, holder, home, expires_at, token FROM leases WHERE connection_id = ?",
            (connection_id,),
        )
        return rows[0] if rows else None

    @staticmethod
    def lost_text(lease: Lease) -> str:
        return (
            f"connection {lease.connection_id}: this node ({lease.holder}) no longer holds the collector "
            f"lease with fencing token {lease.token}; another node collects it now"
        )


def collecting_node(store: LeaseStore, connection_id: str, clock: Callable[[], float] = time.time) -> str | None:
    """The node collecting ``connection_id`` now (the holder of its unexpired
    lease, ``host:pid:…``), for the CLI, API and console; None when no node
    holds it (disabled, a push connection, or between two holders)."""
    rows = store.query(
        "SELECT holder FROM leases WHERE connection_id = ? AND expires_at > ?", (connection_id, _ms(clock()))
    )
    return str(rows[0]["holder"]) if rows else None


def _column(row: Any, name: str, index: int) -> Any:
    """A column of a row, whether the backend gives mappings or tuples."""
    try:
        return row[name]
    except (TypeError, IndexError, KeyError):
        return row[index]


def lease_lost(error: BaseException) -> bool:
    """Is ``error`` (or a leaf of its exception group) a :class:`LeaseLost`?"""
    return any(isinstance(leaf, LeaseLost) for leaf in leaf_errors(error))


class LeaseKeeper:
    """Runs work for a connection only while this node holds its lease.

    ``renew_forever`` (one task per node) renews every held lease in one
    transaction each round and cancels the work of each one it lost."""

    def __init__(self, table: LeaseTable) -> None:
        self.table = table
        self._held: dict[str, tuple[Lease, anyio.CancelScope]] = {}
        self._holding: dict[str, anyio.Event] = {}
        self._taking = 0  # acquisitions under way (counted against the share)
        self._nodes = 1  # nodes alive, as the last heartbeat counted them
        self._elsewhere: dict[str, float] = {}
        self._elsewhere_read_at = float("-inf")
        self._elsewhere_lock = anyio.Lock()

    @property
    def renew_every(self) -> float:
        return self.table.lease_seconds / RENEWALS_PER_LEASE

    @property
    def retry_every(self) -> float:
        return min(self.renew_every, RETRY_SECONDS_MAX)

    def share(self) -> int:
        """How many collectors this node may hold: the connections it was asked
        to collect (every node is asked for every enabled pull connection)
        divided by the nodes alive, rounded up, so together they hold them all."""
        return max(1, math.ceil(len(self._holding) / self._nodes))

    def join(self) -> None:
        """Count this node in before its first collector starts (blocking: a thread)."""
        self._nodes = self.table.heartbeat()

    async def hold(self, connection_id: str, work: Callable[[Lease], Awaitable[None]]) -> None:
        """Until cancelled: wait for the lease, run ``work(lease)`` while it is
        held (cancelled the moment it is lost, or handed over to another node
        when this one holds more than its share), and start over. The lease is
        released when this is cancelled (the connection was disabled, the
        server stops)."""
        # A restarted collector (the connection was edited) waits until the
        # previous one has let the lease go, so one process never holds it twice.
        previous = self._holding.get(connection_id)
        if previous is not None:
            await previous.wait()
        done = self._holding[connection_id] = anyio.Event()
        lease: Lease | None = None
        try:
            while True:
                lease = await self._acquire(connection_id)
                log.info("collector lease acquired", extra=self._extra(lease))
                await self._run_leased(lease, work)
                if lease.handed_over:
                    await self._release(lease)
                    log.info("collector lease handed over: this node held more than its share",
                             extra={**self._extra(lease), "share": self.share(), "nodes": self._nodes})
                # Lost or handed over: the node that has it now keeps it; look again later.
                await anyio.sleep(self.retry_every)
        finally:
            if lease is not None and not lease.lost and await self._release(lease):
                log.info("collector lease released", extra=self._extra(lease))
            done.set()
            if self._holding.get(connection_id) is done:
                del self._holding[connection_id]

    async def _release(self, lease: Lease) -> bool:
        """Give ``lease`` up now, even while being cancelled (within 5 s); True once done."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5) as waited:
            await anyio.to_thread.run_sync(self.table.release, lease)
        return not waited.cancelled_caught

    async def check(self, lease: Lease) -> None:
        """Raise :class:`LeaseLost` unless ``lease`` is still held (asked of the store)."""
        if not await anyio.to_thread.run_sync(self.table.holds, lease):
            raise LeaseLost(self.table.lost_text(lease))

    async def _held_elsewhere(self, connection_id: str) -> bool:
        """Does another node hold it, by a read shared by every waiting connection
        (at most one per half retry interval)?"""
        async with self._elsewhere_lock:
            if time.monotonic() - self._elsewhere_read_at >= self.retry_every / 2:
                self._elsewhere = await anyio.to_thread.run_sync(self.table.taken_elsewhere)
                self._elsewhere_read_at = time.monotonic()
        return self._elsewhere.get(connection_id, float("-inf")) > self.table.clock()

    async def _acquire(self, connection_id: str) -> Lease:
        while True:
            try:
                if await self._held_elsewhere(connection_id) or len(self._held) + self._taking >= self.share():
                    lease = None
                else:
                    self._taking += 1
                    try:
                        lease = await anyio.to_thread.run_sync(self.table.acquire, connection_id)
                    finally:
                        self._taking -= 1
            except Exception as error:  # the store is unreachable: try again, as for a busy lease
                log.warning(
                    "cannot take a collector lease; trying again",
                    extra={"connection": connection_id, "error": str(error), "retry_in_seconds": self.retry_every},
                )
                lease = None
            if lease is not None:
                return lease
            await anyio.sleep(self.retry_every)

    async def _run_leased(self, lease: Lease, work: Callable[[Lease], Awaitable[None]]) -> None:
        with anyio.CancelScope() as scope:
            self._held[lease.connection_id] = (lease, scope)
            try:
                await work(lease)
            except Exception as error:
                if not lease_lost(error):
                    raise
                lease.lost = True
                log.warning("collector lease lost: a fenced write was refused; collector stopped",
                            extra=self._extra(lease))
            finally:
                self._held.pop(lease.connection_id, None)

    async def renew_forever(self) -> None:
        """Renew the held leases every third of a lease, until cancelled; then
        leave the count of nodes, so the others take over at once."""
        try:
            while True:
                await anyio.sleep(self.renew_every)
                await self.renew_held()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await anyio.to_thread.run_sync(self.table.leave)
                except Exception as error:  # the others stop counting this node a lease from now
                    log.warning("cannot remove this node from the state store", extra={"error": str(error)})

    async def renew_held(self) -> None:
        """One round: say this node is alive and count the nodes; renew every
        held lease; stop the work of each one lost, and hand over what this
        node holds beyond its share (a node joined)."""
        try:
            self._nodes = await anyio.to_thread.run_sync(self.table.heartbeat)
        except Exception as error:  # the store is unreachable: keep the last count
            log.warning("cannot record this node in the state store", extra={"error": str(error)})
        held = list(self._held.values())
        if not held:
            return
        try:
            await anyio.to_thread.run_sync(self.table.renew_all, [lease for lease, _ in held])
        except Exception as error:  # the store is unreachable: the leases hold until they run out
            log.warning("cannot renew the collector leases", extra={"count": len(held), "error": str(error)})
        now = self.table.clock()
        kept = []
        for lease, scope in held:
            if not lease.valid(now):
                lease.lost = True
                log.warning("collector lease lost; collector stopped", extra=self._extra(lease))
                scope.cancel()
            else:
                kept.append((lease, scope))
        # The last ones by connection id: every node picks the same way, and a
        # collector handed over is not the one it would take back.
        for lease, scope in sorted(kept, key=lambda held: held[0].connection_id)[self.share():]:
            lease.handed_over = True
            scope.cancel()

    def _extra(self, lease: Lease) -> dict[str, Any]:
        return {"connection": lease.connection_id, "holder": lease.holder, "fencing_token": lease.token}
