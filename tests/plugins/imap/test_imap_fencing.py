"""The IMAP collector on a fenced context (mailpipe.connections.leases), against real Dovecot.

The context is wired as ``mailpipe serve`` wires it for a leased connection
(``set_state`` is ``LeaseTable.set_state_fenced``, ``check_lease`` is
``LeaseKeeper.check``), on a real SQLite state store; the clock is injected,
so "another node took over" happens exactly where the test says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import anyio
import anyio.to_thread
import pytest

from tests.support.imap import make_message
from mailpipe.connections.leases import Lease, LeaseKeeper, LeaseTable, lease_lost
from mailpipe.plugins.imap.settings import ImapSettings
from mailpipe.plugins.imap.collector import CHECKPOINT_KEY, Collector, FetchedMessage, spool_as_is
from mailpipe.spool.queue import Spool
from mailpipe.connections.store import SQLiteStore
from mailpipe.types import CollectContext, Connection
from tests.support.peers.dovecot import Dovecot

LEASE = 30.0
WAIT = 60.0


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fenced_context(
    store: SQLiteStore, table: LeaseTable, lease: Lease, spool: Spool, on_spooled: Callable[[], None]
) -> CollectContext:
    keeper = LeaseKeeper(table)

    async def spool_bytes(data: bytes, metadata: dict[str, Any]) -> str:
        message = await spool.write_bytes(data, {"connection_id": "c1", **metadata})
        on_spooled()
        return message.id

    async def spool_chunks(chunks: Any, metadata: dict[str, Any]) -> str:
        return (await spool.write_chunks(chunks, {"connection_id": "c1", **metadata})).id

    async def get_state(key: str) -> Any:
        return await anyio.to_thread.run_sync(store.get_state, f"c1:{key}")

    async def set_state(key: str, value: Any) -> None:
        await anyio.to_thread.run_sync(table.set_state_fenced, lease, f"c1:{key}", value)

    async def check_lease() -> None:
        await keeper.check(lease)

    return CollectContext(spool_bytes, spool_chunks, get_state, set_state, lambda _: None, None,
                          check_lease=check_lease, fencing_token=lease.token)


def run_until_fenced(connection: Connection, context: CollectContext) -> BaseException:
    """Run the collector; it must end with LeaseLost (returned), not run on."""
    async def deliver(message: FetchedMessage) -> None:
        await spool_as_is(context, message)

    async def scenario() -> BaseException:
        with anyio.fail_after(WAIT):
            try:
                await Collector(connection, context, deliver).run()
            except Exception as error:
                return error
        raise AssertionError("the collector returned")

    return anyio.run(scenario, backend="asyncio")


@pytest.fixture
def setup(tmp_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]):  # type: ignore[no-untyped-def]
    user, password = fresh_imap_user
    store = SQLiteStore(tmp_path / "state.db")
    clock = Clock()
    node_a = LeaseTable(store, "node-a", "host-a:/data", LEASE, clock)
    node_b = LeaseTable(store, "node-b", "host-b:/data", LEASE, clock)
    settings = {"server": dovecot.host, "port": dovecot.imaps_port, "username": user, "password": password,
                "ca_file": str(dovecot.ca_file)}
    yield user, store, clock, node_a, node_b, Connection("c1", "imap", "fencing", True, settings), tmp_path
    store.close()


def test_taken_over_while_spooling_deletes_nothing_and_keeps_the_checkpoint(setup, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    user, store, clock, node_a, node_b, connection, tmp_path = setup
    for number in range(5):
        dovecot.append(user, make_message(number))
    lease = node_a.acquire("c1")
    assert lease is not None
    spool = Spool(tmp_path / "spool")

    def take_over() -> None:
        # Node A "pauses" mid-batch past its lease; node B takes the mailbox over.
        if node_b.current("c1")["holder"] != "node-b":  # type: ignore[index]
            clock.now += LEASE + 1
            assert node_b.acquire("c1") is not None

    error = run_until_fenced(connection, fenced_context(store, node_a, lease, spool, take_over))
    assert lease_lost(error), repr(error)
    assert len(dovecot.uids(user)) == 5, "a fenced node deleted mail"
    saved = store.get_state(f"c1:{CHECKPOINT_KEY}")
    assert saved is not None and saved["last_uid"] == 0, "a fenced node moved the checkpoint"


def test_a_woken_node_does_not_finish_the_actions_it_had_pending(setup, dovecot: Dovecot) -> None:  # type: ignore[no-untyped-def]
    """Spooled and checkpointed, not yet deleted, when node A froze: the
    session A opens on waking must not delete them (node B does, once it has
    checked that they are archived through its own checkpoint)."""
    user, store, clock, node_a, node_b, connection, tmp_path = setup
    for number in range(3):
        dovecot.append(user, make_message(number))
    lease = node_a.acquire("c1")
    assert lease is not None
    status_uidvalidity = _uidvalidity(dovecot, user)
    source = ImapSettings.from_connection(connection).source_key
    node_a.set_state_fenced(lease, f"c1:{CHECKPOINT_KEY}",
                            {"source": source, "uidvalidity": status_uidvalidity, "last_uid": 3})
    clock.now += LEASE + 1
    assert node_b.acquire("c1") is not None

    error = run_until_fenced(connection, fenced_context(store, node_a, lease, Spool(tmp_path / "spool"), lambda: None))
    assert lease_lost(error), repr(error)
    assert len(dovecot.uids(user)) == 3, "a fenced node acted on the mailbox"
    assert store.get_state(f"c1:{CHECKPOINT_KEY}")["last_uid"] == 3


def _uidvalidity(dovecot: Dovecot, user: str) -> int:
    with dovecot.session(user) as client:
        typ, data = client.select("INBOX")
        assert typ == "OK"
        typ, data = client.response("UIDVALIDITY")
        return int(data[0])
