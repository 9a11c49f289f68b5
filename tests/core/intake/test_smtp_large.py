"""Big messages are streamed: ten concurrent 50 MB messages, archived byte for
byte, while the server's peak resident memory stays under 300 MB."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from tests.support.smtp import make_setup, peak_rss_tree_kib, queue_id_of, wait_for_arrival

SENDER = "journal@contoso.com"
MESSAGES = 10
SIZE = 50 * 1024 * 1024
PEAK_RSS_LIMIT_KIB = 300 * 1024


def big_body(size: int) -> bytes:
    """~size bytes of 78-octet lines; every 1000th starts with a dot, so the
    unstuffing is exercised all the way through."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-abc\r\n"
    dotted = b"." + line[1:]
    block = line * 999 + dotted
    return block * (size // len(block))


def test_ten_concurrent_50mb_messages(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.start()
    assert setup.server is not None and setup.server.process is not None
    body = big_body(SIZE)
    wire_body = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"  # dot-stuffed once, shared by all clients
    expected: dict[str, str] = {}
    replies: dict[int, tuple[int, str]] = {}

    def send_one(number: int) -> None:
        header = f"Subject: big {number}\r\nMessage-ID: <big-{number}@contoso.com>\r\n\r\n".encode()
        digest = hashlib.sha256(header)
        digest.update(body)
        with setup.client() as client:
            client.mail(SENDER, [f"SIZE={len(header) + len(body)}"])
            assert client.rcpt(setup.address("o365"))[0] == 250
            assert client.docmd("DATA")[0] == 354
            client.sock.sendall(header)
            client.sock.sendall(wire_body)
            code, text = client.getreply()
        replies[number] = (code, text.decode())
        expected[digest.hexdigest()] = text.decode()

    try:
        threads = [threading.Thread(target=send_one, args=(n,)) for n in range(MESSAGES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        assert all(code == 250 for code, _ in replies.values()) and len(replies) == MESSAGES, replies
        for text in expected.values():
            wait_for_arrival(setup.archive, queue_id_of(text), timeout=300)
        assert archived_digests(setup.archive) == set(expected)
        peak = peak_rss_tree_kib(setup.server.process.pid)
        print(f"server peak RSS {peak / 1024:.0f} MiB (server and pipeline processes)")
        assert peak < PEAK_RSS_LIMIT_KIB, f"server peak RSS {peak / 1024:.0f} MiB (server and pipeline processes)"
    finally:
        setup.stop()


def archived_digests(archive: Path) -> set[str]:
    """The SHA-256 of each archived file, computed from its bytes (not its name)."""
    digests = set()
    for path in sorted(archive.glob("*/??/*.eml")):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digests.add(digest.hexdigest())
    return digests

