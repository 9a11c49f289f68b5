"""An IMAP server killed with SIGKILL in the middle of a large collection.

Two real Dovecot instances, one collector each, in one `mailpipe serve`:
while the crashed server is down the other mailbox is collected completely
(one collector's failure never affects another); once the crashed server is
back on the same port its collector resumes by itself, and every message of
both mailboxes is archived exactly once, none deleted before it was
archived. The log names the cause, not "unhandled errors in a TaskGroup".
"""

from __future__ import annotations

import imaplib
from pathlib import Path
from typing import Any, Callable

from tests.support.helpers import ServerProcess, wait_until
from tests.support.imap import add_imap_connection, archived, bulk_append, make_message, sha256, spooled_hashes
from tests.support.peers.dovecot import Dovecot

CRASHED_MESSAGES = 2000
HEALTHY_MESSAGES = 500
WAIT = 180.0  # bounds only (a loaded machine, and reconnect backoff up to 60 s)


def when_logged_in(read: Callable[[], Any]) -> Any:
    """``read()`` once the test's own login works: a Dovecot just restarted
    may refuse a login for a moment while its auth process starts."""

    def attempt() -> list[Any]:
        try:
            return [read()]
        except imaplib.IMAP4.error:
            return []

    return wait_until(attempt, WAIT, interval=0.5)[0]


def test_a_crashed_imap_server_stops_only_its_own_collector(
    tmp_path: Path,
    config_path: Path,
    dovecot: Dovecot,
    fresh_imap_user: tuple[str, str],
    private_dovecot: Dovecot,
) -> None:
    crashing = private_dovecot
    crashing_user = "crashing"
    crashing_password = crashing.add_user(crashing_user)
    crashing_mail = {sha256(m): m for m in (make_message(n, body_bytes=2048) for n in range(CRASHED_MESSAGES))}
    bulk_append(crashing, crashing_user, crashing_mail.values())
    healthy_user, healthy_password = fresh_imap_user
    healthy_mail = {sha256(m): m for m in (make_message(10_000 + n) for n in range(HEALTHY_MESSAGES))}
    bulk_append(dovecot, healthy_user, healthy_mail.values())

    crashing_id = add_imap_connection(config_path, crashing, crashing_user, crashing_password, enable=True)
    archive, data_dir = tmp_path / "archive", tmp_path / "data"

    def safe(connection_id: str) -> set[str]:
        return spooled_hashes(data_dir) | set(archived(archive, connection_id))

    with ServerProcess(config_path) as server:
        wait_until(lambda: len(safe(crashing_id)) >= 100, WAIT)
        crashing.kill()  # SIGKILL, mid-collection
        assert len(set(archived(archive, crashing_id))) < CRASHED_MESSAGES, "collected before the kill"

        # The other server's mailbox is collected completely while the first is down.
        healthy_id = add_imap_connection(config_path, dovecot, healthy_user, healthy_password, enable=True)
        wait_until(lambda: len(archived(archive, healthy_id)) == HEALTHY_MESSAGES, WAIT,
                   message="the healthy connection was not collected while the other server was down")
        wait_until(lambda: dovecot.uids(healthy_user) == [], WAIT)

        # Nothing left the crashed server without being spooled or archived.
        crashing.start()
        remaining = {sha256(m) for m in when_logged_in(lambda: crashing.fetch_all(crashing_user)).values()}
        assert remaining, "the collection finished before the kill: the test proved nothing"
        lost = set(crashing_mail) - remaining - safe(crashing_id)
        assert not lost, f"{len(lost)} messages left the server without being spooled or archived"

        # Back on the same port: the collector resumes by itself.
        wait_until(lambda: len(archived(archive, crashing_id)) == CRASHED_MESSAGES, WAIT,
                   message="the crashed server's mailbox was not completed after it came back")
        wait_until(lambda: when_logged_in(lambda: crashing.uids(crashing_user)) == [], WAIT)
        logs = server.logs()

    for connection_id, mail in ((crashing_id, crashing_mail), (healthy_id, healthy_mail)):
        stored = archived(archive, connection_id)
        assert set(stored) == set(mail)
        for digest, (raw, metadata) in stored.items():
            assert raw == mail[digest]
            assert len(metadata["arrivals"]) == 1, metadata["arrivals"]

    texts = [str(entry.get("msg", "")) + " " + str(entry.get("error", "")) for entry in logs]
    where = f"{crashing.host}:{crashing.imaps_port}"
    assert any("IMAP collection interrupted" in text and where in text for text in texts), "\n".join(texts[-30:])
    assert not any("unhandled errors in a TaskGroup" in text for text in texts)
    assert not any("flush of closed file" in text for text in texts)
    assert not any(entry.get("msg") == "collector failed; restarting" for entry in logs)
