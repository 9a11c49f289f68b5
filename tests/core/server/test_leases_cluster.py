"""Several real ``mailpipe serve`` nodes on one state store, one real Dovecot.

Each node has its own config, data_dir, spool and SMTP port; they share the
secret key (``MAILPIPE_SECRET_KEY``), the archive directory and the state
store: one PostgreSQL database (``[state] url``), as a cluster is deployed
(docs/scaling.md). The lease logic itself is also tested on SQLite, with an
injected clock, in tests/core/connections/test_leases.py.

A short lease (3 s) keeps the tests quick; every wait polls with a generous
bound and nothing asserts a duration (the takeover delay is printed).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.fernet import Fernet

from tests.support.helpers import ServerProcess, cli, state_url_toml, wait_until, write_config
from tests.support.imap import add_imap_connection, archived, make_message, sha256, spooled_hashes
from mailpipe.connections.store_postgres import PostgresStore
from tests.support.peers.dovecot import Dovecot

LEASE_SECONDS = 3
WAIT = 90.0
#: What a node logs when it acts on a mailbox (mailpipe.plugins.imap.collector).
IMAP_ACTIONS = ("IMAP session open", "collected messages", "finishing after_archive")


class Node:
    """One ``mailpipe serve`` with its own directory, on the shared state file."""

    def __init__(self, root: Path, name: str, state_url: str, archive: Path) -> None:
        directory = root / name
        directory.mkdir()
        sinks = f'[[sinks]]\ntype = "filesystem"\npath = "{archive}"\n'
        extra = f"[cluster]\nlease_seconds = {LEASE_SECONDS}\n\n{state_url_toml(state_url)}"
        self.config = write_config(directory, extra=extra, sinks=sinks)
        # One process per node (the pipeline in it), so that SIGSTOP freezes the whole node.
        text = self.config.read_text()
        self.config.write_text(text.replace("[pipeline]\n", "[pipeline]\nown_process = false\n", 1))
        self.data_dir = directory / "data"
        self.name = name
        self.server = ServerProcess(self.config)

    def set_lease(self, seconds: int) -> None:
        text = self.config.read_text()
        self.config.write_text(text.replace(f"lease_seconds = {LEASE_SECONDS}", f"lease_seconds = {seconds}"))

    def start(self) -> "Node":
        self.server.start(timeout=WAIT)
        return self

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def logged(self, text: str, since: int = 0) -> list[dict[str, Any]]:
        return [entry for entry in self.server.logs()[since:] if text in str(entry.get("msg", ""))]

    def collected(self) -> int:
        return sum(int(entry.get("count", 0)) for entry in self.logged("collected messages"))

    def holder(self) -> str | None:
        acquired = self.logged("collector lease acquired")
        return str(acquired[-1]["holder"]) if acquired else None


@pytest.fixture
def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> Iterator[tuple[list[Node], str, Path]]:
    """Three nodes on one PostgreSQL state store (as deployed: docs/scaling.md)."""
    monkeypatch.setenv("MAILPIPE_SECRET_KEY", Fernet.generate_key().decode())  # every node and the CLI
    PostgresStore(postgres_url).close()  # created and migrated once, before the nodes start
    archive = tmp_path / "archive"
    nodes = [Node(tmp_path, name, postgres_url, archive) for name in ("node1", "node2", "node3")]
    try:
        yield nodes, postgres_url, archive
    finally:
        for node in nodes:
            if node.server.process and node.server.process.poll() is None:
                os.kill(node.pid, signal.SIGCONT)  # a frozen node cannot stop
                node.server.stop()


def lease_row(state_url: str, connection_id: str) -> dict[str, Any] | None:
    store = PostgresStore(state_url, migrate=False)
    try:
        rows = store.query("SELECT holder, expires_at, token FROM leases WHERE connection_id = ?", (connection_id,))
    finally:
        store.close()
    return rows[0] if rows else None


def append(dovecot: Dovecot, user: str, first: int, count: int) -> dict[str, bytes]:
    messages = {}
    for number in range(first, first + count):
        message = make_message(number)
        dovecot.append(user, message)
        messages[sha256(message)] = message
    return messages


def first_node_collects(
    node: Node, archive: Path, dovecot: Dovecot, imap_user: tuple[str, str], count: int
) -> tuple[str, dict[str, bytes]]:
    """``count`` messages in the mailbox, the connection added, ``node`` started:
    it takes the lease and collects them. Returns the connection id and the messages."""
    user, password = imap_user
    messages = append(dovecot, user, 0, count)
    connection_id = add_imap_connection(node.config, dovecot, user, password, enable=True)
    node.start()
    wait_until(lambda: len(archived(archive, connection_id)) == count and not dovecot.uids(user), WAIT,
               message=f"{node.name} did not collect the first messages")
    return connection_id, messages


def test_a_frozen_holder_is_fenced_and_the_other_node_takes_over(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    (node1, node2, _), state_url, archive = cluster
    user = fresh_imap_user[0]
    connection_id, messages = first_node_collects(node1, archive, dovecot, fresh_imap_user, 5)
    node2.start()
    wait_until(lambda: node2.logged("mailpipe is running"), WAIT)
    row = lease_row(state_url, connection_id)
    assert row is not None and row["holder"] == node1.holder() and row["token"] == 1
    assert not node2.logged("starting collector"), "node 2 collects a mailbox whose lease node 1 holds"
    # Any node's CLI (and API, console) names the node that collects.
    assert shown(node2, connection_id)["collected_by"] == node1.holder()

    os.kill(node1.pid, signal.SIGSTOP)  # paused past its lease: it cannot renew, nor notice
    try:
        messages |= append(dovecot, user, 5, 5)
        wait_until(lambda: node2.logged("collector lease acquired"), WAIT, message="node 2 never took over")
        wait_until(lambda: len(archived(archive, connection_id)) == 10 and not dovecot.uids(user), WAIT,
                   message="node 2 did not collect what arrived while node 1 was frozen")
        assert lease_row(state_url, connection_id)["token"] == 2
    finally:
        resumed_at = len(node1.server.logs())
        os.kill(node1.pid, signal.SIGCONT)

    # Node 1 wakes up believing it collects: it notices, and stops before any IMAP action.
    wait_until(lambda: node1.logged("collector lease lost", since=resumed_at), WAIT,
               message="node 1 did not notice it lost the lease")
    messages |= append(dovecot, user, 10, 5)
    wait_until(lambda: len(archived(archive, connection_id)) == 15 and not dovecot.uids(user), WAIT,
               message="the messages sent after node 1 resumed were not collected")
    wait_until(lambda: not spooled_hashes(node1.data_dir) and not spooled_hashes(node2.data_dir), WAIT)

    after_resume = node1.server.logs()[resumed_at:]
    acted = [e for e in after_resume if any(text in str(e.get("msg", "")) for text in IMAP_ACTIONS)]
    assert not acted, f"node 1 acted on the mailbox after it lost the lease: {acted}"
    assert node1.collected() == 5 and node2.collected() == 10, (node1.collected(), node2.collected())
    stored = archived(archive, connection_id)
    assert set(stored) == set(messages), "a message left the mailbox without being archived"
    for digest, (raw, metadata) in stored.items():
        assert raw == messages[digest] and len(metadata["arrivals"]) == 1
    row = lease_row(state_url, connection_id)
    assert row is not None and row["holder"] == node2.holder() and row["token"] == 2
    assert shown(node1, connection_id)["collected_by"] == node2.holder()


def shown(node: Node, connection_id: str) -> dict[str, Any]:
    return cli(node.config, "connections", "show", connection_id, check=True).json


def test_a_killed_holder_is_taken_over_and_nothing_is_collected_twice(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    (node1, node2, _), state_url, archive = cluster
    user = fresh_imap_user[0]
    connection_id, messages = first_node_collects(node1, archive, dovecot, fresh_imap_user, 5)
    node2.start()
    node1.server.kill()  # SIGKILL: no release, the lease runs out
    killed_at = time.monotonic()
    dead = lease_row(state_url, connection_id)
    assert dead is not None and dead["holder"] == node1.holder()
    left = dead["expires_at"] / 1000 - time.time()

    wait_until(lambda: node2.logged("collector lease acquired"), WAIT, message="node 2 never took over")
    took = time.monotonic() - killed_at
    acquired = lease_row(state_url, connection_id)
    assert acquired is not None and acquired["token"] == 2 and acquired["holder"] == node2.holder()
    # A figure for the report, not an assertion (the machine may be loaded).
    print(f"\ntakeover after kill -9: {took:.1f} s; lease {LEASE_SECONDS} s, renewed and retried every "
          f"{LEASE_SECONDS / 3:.1f} s; the dead lease had {max(0.0, left):.1f} s left at the kill")

    messages |= append(dovecot, user, 5, 5)
    wait_until(lambda: len(archived(archive, connection_id)) == 10 and not dovecot.uids(user), WAIT)
    wait_until(lambda: not spooled_hashes(node2.data_dir), WAIT)
    assert node2.collected() == 5
    stored = archived(archive, connection_id)
    assert set(stored) == set(messages)
    assert all(len(metadata["arrivals"]) == 1 for _, metadata in stored.values())


def test_a_restarted_single_node_collects_at_once_after_a_kill(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    """The embedded default's behaviour: one node, killed and started again,
    frees what its dead predecessor held instead of waiting for it to expire
    (a lease far longer than the wait's bound shows that it did not wait)."""
    (node1, _, _), state_url, archive = cluster
    node1.set_lease(3600)
    connection_id, _ = first_node_collects(node1, archive, dovecot, fresh_imap_user, 2)
    node1.server.kill()
    node1.start()
    wait_until(lambda: node1.logged("collector lease acquired"), WAIT)
    row = lease_row(state_url, connection_id)
    assert row is not None and row["holder"] == node1.holder() and row["token"] == 2


def test_a_clean_stop_hands_the_mailbox_over_at_once(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    """SIGTERM releases the lease: the other node need not wait for it to
    expire (a lease far longer than the wait's bound shows that it did not)."""
    (node1, node2, _), state_url, archive = cluster
    node1.set_lease(3600)
    user = fresh_imap_user[0]
    connection_id, messages = first_node_collects(node1, archive, dovecot, fresh_imap_user, 2)
    node2.start()
    assert node1.server.stop() == 0
    assert node1.logged("collector lease released")
    wait_until(lambda: node2.logged("collector lease acquired"), WAIT, message="node 2 waited for the lease to expire")
    messages |= append(dovecot, user, 2, 2)
    try:
        wait_until(lambda: len(archived(archive, connection_id)) == 4 and not dovecot.uids(user), WAIT)
    except AssertionError:
        raise AssertionError("node 2 did not collect:\n" + "\n".join(node2.server.lines[-40:])) from None
    assert set(archived(archive, connection_id)) == set(messages)


MAILBOXES = 20


def test_three_nodes_share_mailboxes_and_the_survivors_take_a_killed_nodes_over(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot
) -> None:
    nodes, state_url, archive = cluster
    for node in nodes:
        node.start()
    users = []
    for number in range(MAILBOXES):
        name = f"lease{number}-{os.urandom(3).hex()}"
        users.append((name, dovecot.add_user(name, f"pw-{os.urandom(6).hex()}")))
    try:
        messages = {user: append(dovecot, user, 0, 2) for user, _ in users}
        # Added while all three run: each node races for each new lease.
        ids = {user: add_imap_connection(nodes[0].config, dovecot, user, password, enable=True)
               for user, password in users}

        def holders() -> dict[str, str]:
            rows = {cid: lease_row(state_url, cid) for cid in ids.values()}
            return {cid: row["holder"] for cid, row in rows.items() if row and row["expires_at"] > time.time() * 1000}

        wait_until(lambda: len(holders()) == MAILBOXES, WAIT, message="not every mailbox got a holder")
        # Balanced: no node holds more than its share (the first to start may
        # take more at first, and hands the excess over within a renewal).
        share = math.ceil(MAILBOXES / 3)
        wait_until(lambda: len(holders()) == MAILBOXES and max(Counter(holders().values()).values()) <= share,
                   WAIT, message=f"a node kept more than its share of {share}")
        by_node = {node.name: [cid for cid, holder in holders().items() if holder == node.holder()] for node in nodes}
        print(f"\n{MAILBOXES} mailboxes across 3 nodes: { {name: len(held) for name, held in by_node.items()} }")
        assert sum(len(held) for held in by_node.values()) == MAILBOXES, "a lease holder is not one of the nodes"
        wait_until(lambda: all(len(archived(archive, ids[user])) == 2 for user, _ in users), WAIT)

        victim = max(nodes, key=lambda node: len(by_node[node.name]))
        survivors = [node for node in nodes if node is not victim]
        victim.server.kill()
        wait_until(lambda: set(holders().values()) <= {node.holder() for node in survivors}
                   and len(holders()) == MAILBOXES, WAIT, message="the killed node's mailboxes were not taken over")
        assert max(Counter(holders().values()).values()) <= math.ceil(MAILBOXES / 2)
        two_more_each_are_collected_once(dovecot, archive, ids, messages, "the kill")
        assert sum(node.collected() for node in nodes) == 4 * MAILBOXES, "a message was collected twice"
    finally:
        for user, _ in users:
            dovecot.remove_user(user, wait=False)


def two_more_each_are_collected_once(
    dovecot: Dovecot, archive: Path, ids: dict[str, str], messages: dict[str, dict[str, bytes]], after: str
) -> None:
    """Two more messages in each mailbox (``ids``: user → connection id), each archived once."""
    for user in ids:
        messages[user] |= append(dovecot, user, 2, 2)
    wait_until(lambda: all(len(archived(archive, ids[user])) == 4 and not dovecot.uids(user) for user in ids),
               WAIT, message=f"mail sent after {after} was not collected")
    for user in ids:
        stored = archived(archive, ids[user])
        assert set(stored) == set(messages[user])
        assert all(len(metadata["arrivals"]) == 1 for _, metadata in stored.values())


def test_a_node_that_joins_takes_over_its_share_and_nothing_is_lost(
    cluster: tuple[list[Node], str, Path], dovecot: Dovecot
) -> None:
    """Node 1 alone collects four mailboxes; node 2 starts: node 1 hands two
    over (released at once), node 2 collects them, and the mail that arrives
    after is collected once, by whichever node holds each mailbox now."""
    (node1, node2, _), state_url, archive = cluster
    users = []
    for number in range(4):
        name = f"join{number}-{os.urandom(3).hex()}"
        users.append((name, dovecot.add_user(name, f"pw-{os.urandom(6).hex()}")))
    try:
        messages = {user: append(dovecot, user, 0, 2) for user, _ in users}
        ids = {user: add_imap_connection(node1.config, dovecot, user, password, enable=True)
               for user, password in users}
        node1.start()

        def holders() -> dict[str, str]:
            rows = {cid: lease_row(state_url, cid) for cid in ids.values()}
            return {cid: row["holder"] for cid, row in rows.items() if row and row["expires_at"] > time.time() * 1000}

        wait_until(lambda: all(len(archived(archive, ids[user])) == 2 for user, _ in users), WAIT)
        assert set(holders().values()) == {node1.holder()} and len(holders()) == 4

        node2.start()
        wait_until(lambda: Counter(holders().values()) == {node1.holder(): 2, node2.holder(): 2}, WAIT,
                   message="node 2 did not get its share of the mailboxes")
        assert len(node1.logged("collector lease handed over")) == 2
        two_more_each_are_collected_once(dovecot, archive, ids, messages, "node 2 joined")
        assert node1.collected() + node2.collected() == 16, "a message was collected twice"
        assert node2.collected() == 4  # two new messages in each of its two mailboxes
    finally:
        for user, _ in users:
            dovecot.remove_user(user, wait=False)
