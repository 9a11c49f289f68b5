"""Live status (issue 13 item 5): what the running server reports per connection.

A real ``mailpipe serve``, real SMTP clients and the real Dovecot: the
status turns red by itself when a collector cannot log in or a required sink
is down, green again when mail flows; ``last_message_at`` and
``archived_24h`` move by exactly the messages sent; the store is written
about once a second, not once per message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from tests.support.helpers import BOTH_STORES, cli, state_rows, wait_until
from tests.support.imap import add_imap_connection, make_message
from tests.support.peers.dovecot import Dovecot
from tests.support.smtp import SmtpSetup, make_setup, send

from mailpipe.connections.live_status import WRITES_KEY

WAIT = 60.0  # bounds only: a broken build fails instead of hanging
SENDER = "journal@contoso.com"


def show(config: Path, connection_id: str) -> dict[str, Any]:
    return cli(config, "connections", "show", connection_id, check=True).json


def live_writes(config: Path) -> int:
    """How many times the live-status aggregators wrote to the state store."""
    found = state_rows(config, "SELECT value FROM state WHERE key = ?", (WRITES_KEY,))
    return int(found[0]["value"]) if found else 0


def send_many(setup: SmtpSetup, count: int, tag: str) -> None:
    with setup.client() as client:
        for number in range(count):
            body = f"Subject: {tag} {number}\r\nFrom: {SENDER}\r\n\r\nbody {number}\r\n".encode()
            code, reply, _ = send(client, SENDER, [setup.address("o365")], body)
            assert code == 250, (code, reply)


@pytest.fixture(scope="module")
def journaling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("live"))
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.start()
    yield setup
    setup.stop()


def test_last_message_and_24h_count_move_by_exactly_the_messages_sent(journaling: SmtpSetup) -> None:
    connection_id = journaling.connections["o365"]["id"]
    before = show(journaling.config, connection_id)
    assert before["last_message_at"] is None and before["archived_24h"] == 0
    assert before["status"] == "untested"
    send_many(journaling, 5, "counted")
    # intake and pipeline flush separately (about once a second each): wait for both
    after = wait_until(
        lambda: (s := show(journaling.config, connection_id))["archived_24h"] == 5 and s["last_message_at"] and s,
        WAIT, 0.3, "archived_24h never reached 5",
    )
    assert after["last_message_at"] and after["last_message_at"].endswith("Z")
    # mail flowed to the archive: the server turned it green on its own
    assert wait_until(lambda: show(journaling.config, connection_id)["status"] == "ok", WAIT, 0.3)
    listed = cli(journaling.config, "connections", "list", check=True).json["connections"]
    [row] = [c for c in listed if c["id"] == connection_id]
    assert row["archived_24h"] == 5 and row["last_message_at"] >= after["last_message_at"]
    # nothing the server reported is an operator's change
    audit = cli(journaling.config, "audit", "list", "--connection", connection_id, check=True).json
    assert all(entry["action"] != "connection.test" for entry in audit["entries"])


def test_state_store_writes_are_batched_not_per_message(journaling: SmtpSetup) -> None:
    connection_id = journaling.connections["o365"]["id"]
    start = show(journaling.config, connection_id)["archived_24h"]
    writes_before = live_writes(journaling.config)
    messages = 300
    send_many(journaling, messages, "batched")
    wait_until(
        lambda: show(journaling.config, connection_id)["archived_24h"] == start + messages,
        WAIT * 3, 0.5, "not all messages were counted",
    )
    writes = live_writes(journaling.config) - writes_before
    # One write per process per second at most: far fewer than one per message.
    assert 0 < writes <= messages // 3, writes


def test_a_required_sink_down_turns_red_and_green_when_mail_is_archived_again(journaling: SmtpSetup) -> None:
    connection_id = journaling.connections["o365"]["id"]
    archive = journaling.archive
    archive.mkdir(exist_ok=True)
    aside = archive.with_name("archive-aside")
    archive.rename(aside)
    archive.write_text("not a directory")
    try:
        send_many(journaling, 1, "sink down")
        red = wait_until(
            lambda: (s := show(journaling.config, connection_id))["status"] == "failed" and s,
            WAIT, 0.3, "the status never turned red while the sink was down",
        )
        assert red["status_error"].startswith("sink filesystem"), red["status_error"]
        assert red["last_error"] == red["status_error"]
    finally:
        archive.unlink()
        aside.rename(archive)
    count = show(journaling.config, connection_id)["archived_24h"]
    send_many(journaling, 1, "sink back")
    green = wait_until(
        lambda: (s := show(journaling.config, connection_id))["status"] == "ok" and s,
        WAIT, 0.3, "the status never turned green after the sink came back",
    )
    assert green["archived_24h"] > count
    assert green["last_error"].startswith("sink filesystem")  # kept for the record


@BOTH_STORES
def test_imap_password_changed_under_a_running_collector(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    from tests.support.helpers import ServerProcess

    user, password = fresh_imap_user
    connection_id = add_imap_connection(config_path, dovecot, user, password, enable=True)
    with ServerProcess(config_path) as server:
        server.wait_for_log("IMAP session open", WAIT)
        wait_until(lambda: show(config_path, connection_id)["status"] == "ok", WAIT, 0.3,
                   "a working collector did not turn the connection green")
        dovecot.add_user(user, password + "-changed")
        dovecot.drop_connections()  # the next login is what notices
        red = wait_until(
            lambda: (s := show(config_path, connection_id))["status"] == "failed" and s,
            WAIT, 0.3, "the status never turned red after the password changed",
        )
        assert "authentication failed" in red["status_error"], red["status_error"]
        assert red["last_error"] == red["status_error"]
        cli(config_path, "connections", "edit", connection_id, "--set", f"password={password}-changed",
            check=True)
        dovecot.append(user, make_message(1))
        # The archive count comes from the pipeline process and last_message_at
        # from the collector's process (flushed once a second): either may
        # show first.
        green = wait_until(
            lambda: (s := show(config_path, connection_id))["status"] == "ok" and s["archived_24h"] == 1
            and s["last_message_at"] and s,
            WAIT, 0.3, "the status never turned green, with the message counted, after the password was fixed",
        )
        assert green["last_message_at"]
        actions = [e["action"] for e in cli(config_path, "audit", "list", "--connection", connection_id,
                                             check=True).json["entries"]]
        assert "connection.test" not in actions  # nobody pressed test
