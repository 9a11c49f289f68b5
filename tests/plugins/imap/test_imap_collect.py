"""imap collection by a real `mailpipe serve` from a real Dovecot over TLS.

Byte-for-byte archiving, each after_archive action checked on the server,
incremental restarts, IDLE, reconnects after BYE and after a dropped
connection, and a UIDVALIDITY change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from tests.support.helpers import ServerProcess, cli, wait_until
from tests.support.imap import add_imap_connection, archived, bulk_append, make_message, sha256
from tests.support.peers.dovecot import Dovecot

from mailpipe.plugins.imap.client import ImapSession
from mailpipe.plugins.imap.collector import Collector, FetchedMessage, spool_as_is
from mailpipe.spool.queue import Spool
from mailpipe.types import CollectContext, Connection

WAIT = 30.0  # bounds only: a broken build fails instead of hanging

ODD_MESSAGES = [
    # 8-bit UTF-8 body with no MIME declaration at all
    b"From: a@x\r\nSubject: caf\xc3\xa9 \xe2\x82\xac\r\n\r\nGr\xc3\xbc\xc3\x9fe, na\xc3\xafve \xf0\x9f\x93\xa7\r\n",
    # raw Latin-1 in a header, 8bit transfer encoding declared
    b"From: b@x\r\nSubject: Pr\xe9sentation\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe0 bient\xf4t\r\n",
    # multipart whose closing boundary never comes, with folded headers and a tab
    b"From: c@x\r\nSubject: broken\r\n multipart\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed;\r\n\tboundary=\"zzz\"\r\n\r\npreamble\r\n--zzz\r\n"
    b"Content-Type: text/plain\r\n\r\npart one\r\n--zzz\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n",
    # a message inside a message, and no final line break
    b"From: d@x\r\nSubject: nested\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: inner@x\r\nSubject: inner\r\n\r\ninner body",
    # one 20,000-character line and trailing white space
    b"From: e@x\r\nSubject: long line   \r\n\r\n" + b"y" * 20000 + b"\r\n   \r\n\r\n",
    # headers only
    b"From: f@x\r\nSubject: no body\r\n",
]


def test_archives_byte_for_byte_then_deletes(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    messages = ODD_MESSAGES + [make_message(n) for n in range(20)]
    bulk_append(dovecot, user, messages)
    served = dovecot.fetch_all(user)
    assert sorted(served.values()) == sorted(messages), "Dovecot altered a message on APPEND"
    uidvalidity_uids = dovecot.uids(user)

    connection_id = add_imap_connection(config_path, dovecot, user, password, enable=True)
    archive = tmp_path / "archive"
    with ServerProcess(config_path):
        wait_until(lambda: len(archived(archive, connection_id)) == len(messages), WAIT)
        wait_until(lambda: dovecot.uids(user) == [], WAIT, message="after_archive=delete left mail behind")

    stored = archived(archive, connection_id)
    assert {sha256(m) for m in messages} == set(stored)
    for digest, (raw, metadata) in stored.items():
        assert sha256(raw) == digest
        (arrival,) = metadata["arrivals"]
        assert arrival["provenance"] == "imap"
        assert arrival["connection_type"] == "imap"
        assert arrival["imap"]["server"] == dovecot.host
        assert arrival["imap"]["mailbox"] == "INBOX"
        assert isinstance(arrival["imap"]["uidvalidity"], int)
        assert arrival["imap"]["uid"] in uidvalidity_uids
    assert cli(config_path, "archive", "verify", check=True).json["ok"]


def test_move_creates_the_folder_and_moves(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    messages = [make_message(n) for n in range(12)]
    bulk_append(dovecot, user, messages)
    connection_id = add_imap_connection(
        config_path, dovecot, user, password, enable=True, after_archive="move", move_to="Processed"
    )
    with ServerProcess(config_path):
        wait_until(lambda: "Processed" in dovecot.mailboxes(user) and len(dovecot.uids(user, "Processed")) == 12,
                   WAIT, message="messages were not moved")
        wait_until(lambda: len(archived(tmp_path / "archive", connection_id)) == 12, WAIT)
    assert dovecot.uids(user) == []
    assert sorted(dovecot.fetch_all(user, "Processed").values()) == sorted(messages)


def test_seen_and_a_restart_collects_only_new_mail(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    archive = tmp_path / "archive"
    first = [make_message(n) for n in range(3)]
    bulk_append(dovecot, user, first)
    connection_id = add_imap_connection(config_path, dovecot, user, password, enable=True, after_archive="seen")
    with ServerProcess(config_path) as server:
        wait_until(lambda: len(archived(archive, connection_id)) == 3, WAIT)
        wait_until(lambda: all("\\Seen" in f for f in dovecot.flags(user).values()), WAIT)
        server.wait_for_log("collected messages", count=3)

    second = [make_message(n) for n in range(3, 5)]
    bulk_append(dovecot, user, second)
    with ServerProcess(config_path) as server:
        wait_until(lambda: len(archived(archive, connection_id)) == 5, WAIT)
        server.wait_for_log("collected messages", count=2)
        counts = [e["count"] for e in server.logs() if e.get("msg") == "collected messages"]
        assert counts == [2], counts

    flags = dovecot.flags(user)
    assert len(flags) == 5 and all("\\Seen" in f for f in flags.values())
    for _, metadata in archived(archive, connection_id).values():
        assert len(metadata["arrivals"]) == 1, "a message was collected twice"


def test_idle_and_reconnect_after_bye_and_after_a_dropped_connection(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    archive = tmp_path / "archive"
    connection_id = add_imap_connection(config_path, dovecot, user, password, enable=True, poll_interval=3600)
    with ServerProcess(config_path) as server:
        server.wait_for_log("IMAP session open", connection=connection_id, idle=True)
        # poll_interval is an hour: only IDLE can bring this in.
        dovecot.append(user, make_message(1))
        wait_until(lambda: len(archived(archive, connection_id)) == 1, WAIT, message="IDLE did not pick up new mail")

        dovecot.drop_connections()  # graceful: "* BYE Server shutting down."
        server.wait_for_log("IMAP collection interrupted; reconnecting", WAIT)
        dovecot.append(user, make_message(2))
        wait_until(lambda: len(archived(archive, connection_id)) == 2, WAIT, message="no reconnect after BYE")

        dovecot.drop_connections(abrupt=True)  # the connection just dies
        wait_until(
            lambda: len([e for e in server.logs() if e.get("msg") == "IMAP collection interrupted; reconnecting"]) >= 2,
            WAIT,
        )
        dovecot.append(user, make_message(3))
        wait_until(lambda: len(archived(archive, connection_id)) == 3, WAIT, message="no reconnect after a drop")
        # the pipeline process can archive a message before the collector has deleted it
        wait_until(lambda: dovecot.uids(user) == [], WAIT, message="archived messages were not deleted")


def test_uidvalidity_change_recollects_without_loss_or_duplicates(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    archive = tmp_path / "archive"
    dovecot.create_mailbox(user, "Journal")
    old = [make_message(n) for n in range(2)]
    bulk_append(dovecot, user, old, "Journal")
    connection_id = add_imap_connection(
        config_path, dovecot, user, password, enable=True, mailbox="Journal", after_archive="seen"
    )
    with ServerProcess(config_path):
        wait_until(lambda: len(archived(archive, connection_id)) == 2, WAIT)

    # The mailbox is re-created (as after a server migration): new UIDVALIDITY,
    # UIDs start again at 1, the old messages are there again with one new one.
    with dovecot.session(user) as client:
        assert client.delete('"Journal"')[0] == "OK"
    dovecot.create_mailbox(user, "Journal")
    new = make_message(99)
    bulk_append(dovecot, user, old + [new], "Journal")
    with ServerProcess(config_path) as server:
        wait_until(lambda: len(archived(archive, connection_id)) == 3, WAIT)
        server.wait_for_log("UIDVALIDITY changed", WAIT)
        server.wait_for_log("collected messages", WAIT, count=3)
    stored = archived(archive, connection_id)
    assert set(stored) == {sha256(m) for m in old + [new]}, "one file per content"
    for message in old:
        uidvalidities = {a["imap"]["uidvalidity"] for a in stored[sha256(message)][1]["arrivals"]}
        assert len(uidvalidities) == 2, "the re-collection is recorded as a second arrival"


def test_polls_when_the_server_offers_no_idle(
    tmp_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process collector on a real Spool, with IDLE hidden from it."""
    user, password = fresh_imap_user
    real_has = ImapSession.has
    monkeypatch.setattr(ImapSession, "has", lambda self, capability: capability != "IDLE" and real_has(self, capability))
    spool = Spool(tmp_path / "spool")
    state: dict[str, Any] = {}

    async def spool_bytes(data: bytes, metadata: dict[str, Any]) -> str:
        return (await spool.write_bytes(data, {"connection_id": "c1", **metadata})).id

    async def spool_chunks(chunks: Any, metadata: dict[str, Any]) -> str:
        return (await spool.write_chunks(chunks, {"connection_id": "c1", **metadata})).id

    async def get_state(key: str) -> Any:
        return state.get(key)

    async def set_state(key: str, value: Any) -> None:
        state[key] = value

    context = CollectContext(spool_bytes, spool_chunks, get_state, set_state, lambda _: None, None)
    settings = {"server": dovecot.host, "port": dovecot.imaps_port, "username": user, "password": password,
                "ca_file": str(dovecot.ca_file), "poll_interval": 1}
    connection = Connection("c1", "imap", "poll test", True, settings)

    async def deliver(message: FetchedMessage) -> None:
        await spool_as_is(context, message)

    async def scenario() -> None:
        dovecot.append(user, make_message(1))
        async with anyio.create_task_group() as group:
            group.start_soon(Collector(connection, context, deliver).run)
            with anyio.fail_after(WAIT):
                while len(spool.pending()) < 1:
                    await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(dovecot.append, user, make_message(2))
                while len(spool.pending()) < 2:  # only a poll can find it
                    await anyio.sleep(0.05)
                # the delete follows the spooling: wait for it too
                while await anyio.to_thread.run_sync(dovecot.uids, user):
                    await anyio.sleep(0.05)
            group.cancel_scope.cancel()

    anyio.run(scenario, backend="asyncio")
    assert state["checkpoint"]["last_uid"] == 2
    assert sorted(m.metadata["imap"]["uid"] for m in spool.pending()) == [1, 2]
    assert dovecot.uids(user) == []
