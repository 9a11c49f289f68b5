"""A 50 MB message is collected byte for byte without being held whole in memory.

The collector fetches messages above 8 MiB in 4 MiB ranges
(``BODY.PEEK[]<offset.length>``) straight into the spool, so the server
process's peak memory grows by a few ranges, not by the message.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from tests.support.helpers import ServerProcess, cli, wait_until
from tests.support.imap import add_imap_connection, archived, sha256
from tests.support.peers.dovecot import Dovecot

SIZE = 50 * 1024 * 1024


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def big_message(size: int) -> bytes:
    head = (
        b"From: big@contoso.com\r\nSubject: a large journaled attachment\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    raw = base64.encodebytes(os.urandom((size - len(head)) * 3 // 4 + 64)).replace(b"\n", b"\r\n")
    return head + raw[: size - len(head) - 2] + b"\r\n"


def test_fifty_megabyte_message_streams_through(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    message = big_message(SIZE)
    assert len(message) == SIZE
    dovecot.append(user, message)
    connection_id = add_imap_connection(config_path, dovecot, user, password)
    archive = tmp_path / "archive"
    with ServerProcess(config_path) as server:
        assert server.process is not None
        before = peak_rss_bytes(server.process.pid)
        cli(config_path, "connections", "enable", connection_id, check=True)
        wait_until(lambda: len(archived(archive, connection_id)) == 1, 120, interval=0.5)
        wait_until(lambda: dovecot.uids(user) == [], 60)
        growth = peak_rss_bytes(server.process.pid) - before
    ((digest, (raw, metadata)),) = archived(archive, connection_id).items()
    assert digest == sha256(message) and raw == message
    assert metadata["size"] == SIZE
    assert growth < SIZE // 2, f"peak memory grew by {growth / 2**20:.0f} MiB for a {SIZE / 2**20:.0f} MiB message"
