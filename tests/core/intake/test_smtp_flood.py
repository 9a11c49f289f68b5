"""A connection flood (issue 11, item 4): real sockets against `mailpipe serve`.

One client address opens many idle connections; the per-client limit answers
the excess `421 4.7.0` and closes them, while another sender's mail is still
accepted and archived, and the log says so once, not once per connection. A
server started with a low open-files limit keeps its descriptors (the total
limit is held below it) and serves again after the flood, with a bounded log.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from pathlib import Path

import pytest

from tests.support.helpers import ServerProcess, wait_until
from tests.support.smtp import make_setup, queue_id_of, send, wait_for_arrival

pytestmark = pytest.mark.peer

SENDER = "journal-ndr@example.com"
FLOODER = "127.0.0.2"


def greeting(sock: socket.socket) -> bytes:
    """The server's first line (220 or 421), or b"" if it closed without one."""
    sock.settimeout(60)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
    return data


def flood(port: int, count: int) -> tuple[list[socket.socket], list[bytes]]:
    sockets, greetings = [], []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((FLOODER, 0))
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
        greetings.append(greeting(sock))
    return sockets, greetings


def message(subject: str) -> bytes:
    return f"From: a@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_a_flood_from_one_address_gets_421_and_others_are_served(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, smtp="max_connections_per_client = 20\n")
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    with ServerProcess(setup.config) as server:
        sockets, greetings = flood(setup.port, 60)
        try:
            assert [g[:3] for g in greetings].count(b"220") == 20
            refused = [g for g in greetings if not g.startswith(b"220")]
            assert len(refused) == 40 and all(g.startswith(b"421 4.7.0") for g in refused)
            # the flood is still open: a legitimate sender is served and archived
            with contextlib.closing(setup.client()) as client:
                code, text, _ = send(client, SENDER, [setup.address("o365")], message("during the flood"))
            assert code == 250, text
            wait_for_arrival(setup.archive, queue_id_of(text))
        finally:
            for sock in sockets:
                sock.close()
        server.wait_for_log("SMTP per-client connection limit reached")
        lines = [e for e in server.logs() if "connection limit reached" in str(e.get("msg"))]
        assert len(lines) == 1  # one line for the condition, not one per refused connection
        assert lines[0]["peer_ip"] == FLOODER and lines[0]["limit"] == 20
        ready = server.wait_for_log("SMTP listener ready")
        assert ready["open_files_limit"] >= 256 and ready["max_connections_per_client"] == 20


def low_open_files_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_a_flood_past_a_low_open_files_limit_leaves_the_server_serving(tmp_path: Path) -> None:
    # no per-client limit: the flood meets the total limit, which the server
    # holds below its 256 open files
    setup = make_setup(tmp_path, smtp="max_connections_per_client = 0\n")
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    with ServerProcess(setup.config, preexec_fn=low_open_files_limit) as server:
        ready = server.wait_for_log("SMTP listener ready")
        assert ready["open_files_limit"] == 256 and ready["max_connections"] < 256
        sockets, greetings = flood(setup.port, 400)
        try:
            assert any(g.startswith(b"421 4.7.0") for g in greetings)
            assert [g[:3] for g in greetings].count(b"220") == ready["max_connections"]
        finally:
            for sock in sockets:
                sock.close()

        def served() -> str | None:
            with contextlib.closing(setup.client()) as client:
                code, text, _ = send(client, SENDER, [setup.address("o365")], message("after the flood"))
            return text if code == 250 else None

        text = wait_until(served, timeout=60, interval=0.5, message="the server did not serve after the flood")
        wait_for_arrival(setup.archive, queue_id_of(text))
        assert server.stop() == 0
    assert len(server.lines) < 100, "\n".join(server.lines[-20:])
    assert not [line for line in server.lines if "Traceback" in line or "out of system resource" in line]
    assert len([e for e in server.logs() if "connection limit reached" in str(e.get("msg"))]) == 1

