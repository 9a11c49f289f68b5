"""SIGKILL of `mailpipe serve` in the middle of IMAP collection, several times.

After each kill: no message has left the server without being in the spool
or the archive. After the last restart: every message archived exactly
once — one file per content, one arrival per message — and the mailbox empty.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.helpers import ServerProcess, wait_until
from tests.support.imap import add_imap_connection, archived, bulk_append, make_message, sha256, spooled_hashes
from tests.support.peers.dovecot import Dovecot

MESSAGES = 1500
WAIT = 60.0


def test_sigkill_during_collection_loses_nothing_and_archives_nothing_twice(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    messages = {sha256(m): m for m in (make_message(n, body_bytes=2048) for n in range(MESSAGES))}
    bulk_append(dovecot, user, messages.values())
    connection_id = add_imap_connection(config_path, dovecot, user, password, enable=True)
    archive, data_dir = tmp_path / "archive", tmp_path / "data"

    def safe() -> set[str]:
        return spooled_hashes(data_dir) | set(archived(archive, connection_id))

    kills = 0
    for step in (100, 400, 400):
        target = len(safe()) + step
        server = ServerProcess(config_path).start()
        wait_until(lambda: len(safe()) >= target or not dovecot.uids(user), WAIT)
        server.kill()
        on_server = {sha256(m) for m in dovecot.fetch_all(user).values()}
        missing = set(messages) - on_server - safe()
        assert not missing, f"{len(missing)} messages left the server without being spooled or archived"
        if not on_server:
            break
        kills += 1
    assert kills >= 1, "the collection finished before any kill: the test proved nothing"

    with ServerProcess(config_path):
        wait_until(
            lambda: len(archived(archive, connection_id)) == MESSAGES and not spooled_hashes(data_dir), WAIT
        )
        wait_until(lambda: dovecot.uids(user) == [], WAIT)

    stored = archived(archive, connection_id)
    assert set(stored) == set(messages)
    for digest, (raw, metadata) in stored.items():
        assert raw == messages[digest]
        assert len(metadata["arrivals"]) == 1, metadata["arrivals"]
