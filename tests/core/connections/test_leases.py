"""Collector leases and fencing at the state-store level (mailpipe.connections.leases).

The clock is injected: leases expire because the test moves the clock, not
because time passes, so nothing here waits for a lease to run out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest

from mailpipe.cli.config import effective_config
from mailpipe.config import parse_config
from mailpipe.errors import ConfigError, LeaseLost
from mailpipe.plugin_host import PluginHost
from mailpipe.connections.leases import Lease, LeaseKeeper, LeaseTable, collecting_node
from mailpipe.connections.store import SQLiteStore

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def node(store: SQLiteStore, clock: Clock, name: str, home: str | None = None, lease: float = LEASE) -> LeaseTable:
    return LeaseTable(store, holder=name, home=home or f"host-{name}:/data", lease_seconds=lease, clock=clock)


def test_one_holder_at_a_time_and_takeover_after_expiry(store: SQLiteStore, clock: Clock) -> None:
    a, b = node(store, clock, "a"), node(store, clock, "b")
    held = a.acquire("c1")
    assert held is not None and held.token == 1
    assert b.acquire("c1") is None, "a second node took a lease that was held"

    clock.advance(LEASE * 0.9)
    assert a.renew(held) and held.expires_at == clock.now + LEASE
    clock.advance(LEASE * 0.9)  # past the first expiry, within the renewed one
    assert b.acquire("c1") is None and a.holds(held)

    clock.advance(LEASE)  # a stopped renewing (dead, partitioned, paused)
    taken = b.acquire("c1")
    assert taken is not None and taken.token == 2, "a takeover must raise the fencing token"
    assert not a.renew(held) and held.lost
    assert not a.holds(held)
    assert a.acquire("c1") is None
    assert store.query("SELECT holder, token FROM leases") == [{"holder": "b", "token": 2}]
    assert a.taken_elsewhere() == {"c1": taken.expires_at} and b.taken_elsewhere() == {}


def test_renewing_or_acquiring_again_while_held_keeps_the_token(store: SQLiteStore, clock: Clock) -> None:
    a = node(store, clock, "a")
    first = a.acquire("c1")
    clock.advance(LEASE / 3)
    again = a.acquire("c1")
    assert first is not None and again is not None and again.token == first.token == 1


def test_every_new_acquisition_raises_the_token(store: SQLiteStore, clock: Clock) -> None:
    a, b = node(store, clock, "a"), node(store, clock, "b")
    tokens = []
    for table in (a, b, a, b):
        lease = table.acquire("c1")
        assert lease is not None
        tokens.append(lease.token)
        table.release(lease)
    assert tokens == [1, 2, 3, 4]
    assert a.acquire("c2") is not None and a.acquire("c2").token == 1  # per connection


def test_one_round_renews_every_held_lease_and_marks_the_taken_one_lost(store: SQLiteStore, clock: Clock) -> None:
    a = node(store, clock, "a")
    held = [a.acquire(f"c{i}") for i in range(1200)]  # more than one renewing UPDATE's worth
    assert all(lease is not None for lease in held)
    leases = [lease for lease in held if lease is not None]
    clock.advance(LEASE / 2)
    store.execute("UPDATE leases SET holder = 'b', token = token + 1 WHERE connection_id = 'c7'")  # taken over
    a.renew_all(leases)
    assert [lease.connection_id for lease in leases if lease.lost] == ["c7"]
    assert all(lease.expires_at == clock.now + LEASE for lease in leases if not lease.lost)
    clock.advance(LEASE * 0.9)  # past the first expiry: only the renewal keeps them
    assert a.holds(leases[0]) and not a.holds(leases[7])


def test_release_hands_over_at_once(store: SQLiteStore, clock: Clock) -> None:
    a, b = node(store, clock, "a"), node(store, clock, "b")
    held = a.acquire("c1")
    assert held is not None
    a.release(held)
    taken = b.acquire("c1")
    assert taken is not None and taken.token == 2


def test_a_stale_token_cannot_move_the_checkpoint_back(store: SQLiteStore, clock: Clock) -> None:
    a, b = node(store, clock, "a"), node(store, clock, "b")
    old = a.acquire("c1")
    assert old is not None
    a.set_state_fenced(old, "c1:checkpoint", {"last_uid": 10})

    clock.advance(LEASE + 1)  # a is paused past its lease; b takes over and collects on
    new = b.acquire("c1")
    assert new is not None
    b.set_state_fenced(new, "c1:checkpoint", {"last_uid": 50})

    # a wakes up and writes what it had: refused, whatever its own clock says.
    clock.now -= LEASE + 1
    with pytest.raises(LeaseLost, match="fencing token 1"):
        a.set_state_fenced(old, "c1:checkpoint", {"last_uid": 10})
    assert store.get_state("c1:checkpoint") == {"last_uid": 50}


def test_an_expired_lease_refuses_writes_even_before_anyone_takes_it(store: SQLiteStore, clock: Clock) -> None:
    a = node(store, clock, "a")
    held = a.acquire("c1")
    assert held is not None
    clock.advance(LEASE)
    with pytest.raises(LeaseLost):
        a.set_state_fenced(held, "c1:checkpoint", {"last_uid": 1})
    assert store.get_state("c1:checkpoint") is None


def test_a_restarted_node_frees_what_its_killed_predecessor_held(store: SQLiteStore, clock: Clock) -> None:
    killed = node(store, clock, "a-pid1", home="host-a:/data")
    old = killed.acquire("c1")
    other = node(store, clock, "b")
    other_lease = other.acquire("c2")
    assert old is not None and other_lease is not None

    restarted = node(store, clock, "a-pid2", home="host-a:/data")
    assert restarted.release_left_behind() == 1  # only its own home's lease
    lease = restarted.acquire("c1")
    assert lease is not None and lease.token == 2
    with pytest.raises(LeaseLost):
        killed.set_state_fenced(old, "c1:checkpoint", {"last_uid": 1})
    assert other.holds(other_lease)


def test_two_store_connections_racing_never_both_hold(tmp_path: Path, clock: Clock) -> None:
    """Two connections to one SQLite file (as two processes have) take turns:
    at every instant of the injected clock exactly one of them holds the lease."""
    stores = [SQLiteStore(tmp_path / "shared.db") for _ in range(2)]
    tables = [node(stores[i], clock, f"n{i}") for i in range(2)]
    try:
        for step in range(40):
            results: list[Lease | None] = [None, None]

            def take(index: int) -> None:
                results[index] = tables[index].acquire("c1")

            threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            winners = [lease for lease in results if lease is not None]
            assert len(winners) == 1, f"step {step}: {results}"
            clock.advance(LEASE + 1)  # the winner stops renewing
        assert stores[0].query("SELECT token FROM leases")[0]["token"] == 40
    finally:
        for opened in stores:
            opened.close()


@pytest.mark.anyio
async def test_work_is_cancelled_when_the_lease_is_taken_over(store: SQLiteStore, clock: Clock) -> None:
    # A short lease so that the keeper's renewal loop turns quickly; expiry
    # itself still comes from the injected clock.
    a, b = node(store, clock, "a", lease=0.3), node(store, clock, "b", lease=0.3)
    started, cancelled = anyio.Event(), anyio.Event()
    runs: list[int] = []

    async def work(lease: Lease) -> None:
        runs.append(lease.token)
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            keeper = LeaseKeeper(a)
            group.start_soon(keeper.renew_forever)
            group.start_soon(keeper.hold, "c1", work)
            await started.wait()
            clock.advance(10)  # a's lease runs out before its next renewal
            assert b.acquire("c1") is not None
            await cancelled.wait()
            group.cancel_scope.cancel()
    assert runs == [1]
    assert store.query("SELECT holder, token FROM leases") == [{"holder": "b", "token": 2}]


@pytest.mark.anyio
async def test_a_refused_fenced_write_stops_the_work_and_a_stop_releases(store: SQLiteStore, clock: Clock) -> None:
    a = node(store, clock, "a", lease=0.3)
    keeper = LeaseKeeper(a)
    tokens: list[int] = []
    second = anyio.Event()

    async def work(lease: Lease) -> None:
        tokens.append(lease.token)
        if len(tokens) == 1:
            # Another node took it over and let it go again meanwhile.
            store.execute("UPDATE leases SET holder = 'b', token = token + 1, expires_at = 0")
            await keeper.check(lease)  # raises LeaseLost
        second.set()
        await anyio.sleep_forever()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(keeper.renew_forever)
            group.start_soon(keeper.hold, "c1", work)
            await second.wait()
            group.cancel_scope.cancel()
    assert tokens == [1, 3]  # gave up token 1; the expired-or-free lease was taken anew
    assert store.query("SELECT expires_at FROM leases") == [{"expires_at": 0}], "a stop must release the lease"


def test_lease_seconds_is_configured_checked_and_shown(tmp_path: Path) -> None:
    config = parse_config("[cluster]\nlease_seconds = 3\n", tmp_path, "test.toml")
    assert config.cluster.lease_seconds == 3
    assert parse_config("", tmp_path, "test.toml").cluster.lease_seconds == 30
    assert effective_config(config, PluginHost())["effective"]["cluster"] == {"lease_seconds": 3}
    with pytest.raises(ConfigError, match=r"lease_seconds.*1 to 3600"):
        parse_config("[cluster]\nlease_seconds = 0\n", tmp_path, "test.toml")
    with pytest.raises(ConfigError, match="lease_secs"):
        parse_config("[cluster]\nlease_secs = 10\n", tmp_path, "test.toml")


@pytest.mark.anyio
async def test_a_restarted_collector_waits_for_the_previous_one_to_let_go(store: SQLiteStore, clock: Clock) -> None:
    """An edited connection's collector is cancelled and started again at once:
    the two never run together, and the new one holds a lease of its own."""
    keeper = LeaseKeeper(node(store, clock, "a", lease=0.3))
    running: list[int] = []
    overlaps: list[list[int]] = []
    second = anyio.Event()

    async def work(lease: Lease) -> None:
        running.append(lease.token)
        if len(running) > 1:
            overlaps.append(list(running))
        if lease.token == 2:
            second.set()
        try:
            await anyio.sleep_forever()
        finally:
            running.remove(lease.token)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(keeper.renew_forever)
            first = anyio.CancelScope()  # as the server's _refresh does for each collector
            group.start_soon(_in_scope, first, keeper, work)
            while not running:
                await anyio.sleep(0.01)
            first.cancel()
            group.start_soon(keeper.hold, "c1", work)
            await second.wait()
            group.cancel_scope.cancel()
    assert not overlaps


async def _in_scope(scope: anyio.CancelScope, keeper: LeaseKeeper, work: Any) -> None:
    with scope:
        await keeper.hold("c1", work)


def test_the_collecting_node_is_the_holder_of_an_unexpired_lease(store: SQLiteStore, clock: Clock) -> None:
    """What the CLI, API and console show as ``collected_by``."""
    a = node(store, clock, "a")
    assert collecting_node(store, "c1", clock) is None  # never leased
    held = a.acquire("c1")
    assert held is not None and collecting_node(store, "c1", clock) == "a"
    clock.advance(LEASE + 1)  # a stopped renewing: nobody collects until another takes over
    assert collecting_node(store, "c1", clock) is None
    assert node(store, clock, "b").acquire("c1") is not None
    assert collecting_node(store, "c1", clock) == "b"
    assert collecting_node(store, "c2", clock) is None


@pytest.mark.anyio
async def test_a_node_that_joins_gets_its_share_and_a_node_that_leaves_gives_it_back(
    store: SQLiteStore, clock: Clock
) -> None:
    """Balancing: a node holds at most ceil(connections / nodes alive). One
    node alone collects four mailboxes; when a second node counts itself in,
    the first hands two over (released at once, not left to expire) and does
    not take them back; when the second leaves, the first collects all four
    again."""
    a, b = node(store, clock, "a", lease=0.3), node(store, clock, "b", lease=0.3)
    keeper = LeaseKeeper(a)
    running: set[str] = set()
    connections = ["c0", "c1", "c2", "c3"]

    def holders() -> dict[str, str]:
        rows = store.query("SELECT connection_id, holder FROM leases WHERE expires_at > 0")
        return {row["connection_id"]: row["holder"] for row in rows}

    async def until(condition: Any) -> None:
        while not condition():
            await anyio.sleep(0.02)

    def work_for(connection_id: str) -> Any:
        async def work(lease: Lease) -> None:
            running.add(connection_id)
            try:
                await anyio.sleep_forever()
            finally:
                running.discard(connection_id)
        return work

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            keeper.join()
            group.start_soon(keeper.renew_forever)
            for connection_id in connections:
                group.start_soon(keeper.hold, connection_id, work_for(connection_id))
            await until(lambda: running == set(connections))
            assert keeper.share() == 4

            assert b.heartbeat() == 2  # a second node counts itself in
            # The other two stopped and released (not left to expire): free to take.
            await until(lambda: running == {"c0", "c1"} and set(holders()) == {"c0", "c1"})
            assert keeper.share() == 2
            for _ in range(10):  # a few retry rounds: a does not take them back
                await anyio.sleep(keeper.retry_every)
                assert running == {"c0", "c1"}
            taken = [b.acquire("c2"), b.acquire("c3")]
            assert all(lease is not None for lease in taken)
            assert holders() == {"c0": "a", "c1": "a", "c2": "b", "c3": "b"}

            for lease in taken:  # b stops cleanly: releases, and leaves the count
                assert lease is not None
                b.release(lease)
            b.leave()
            await until(lambda: running == set(connections))
            assert holders() == {c: "a" for c in connections}
            group.cancel_scope.cancel()
    assert store.query("SELECT holder FROM nodes") == [], "a stop must take the node out of the count"
