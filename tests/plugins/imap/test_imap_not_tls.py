"""`connections test` on an imap connection whose port speaks another protocol.

docs/imap.md promises "the server does not speak TLS on this port" for the
usual mistake of pointing mailpipe at a plain-text port. Plain IMAP is
covered against Dovecot (test_imap_test_hook.py); here the port belongs to
other services, as real sockets on loopback: one that greets first in plain
text (an SMTP banner) and an HTTP server, which waits for the client and
answers the TLS handshake with an HTTP error page. Before, both ended as
``TLS handshake … failed: WRONG_VERSION_NUMBER``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.support.helpers import cli

BANNER = b"220 relay.test ESMTP ready\r\n"


@pytest.fixture
def smtp_banner_port() -> Iterator[int]:
    """A port that greets every client with an SMTP banner, as a mail server's port 25 does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(5)
                try:
                    client.sendall(BANNER)
                    client.recv(4096)  # the client's TLS hello, unanswered but for the banner
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=10)
    listener.close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _test_connection_on(config: Path, port: int) -> dict:
    added = cli(
        config, "connections", "add", "imap", "--description", "wrong port",
        "--set", "server=127.0.0.1", "--set", f"port={port}",
        "--set", "username=archive", "--set", "password=not-sent-anywhere",
        check=True,
    )
    result = cli(config, "connections", "test", str(added.json["id"]))
    assert result.code == 1, result
    return result.json


@pytest.mark.parametrize("service", ["smtp_banner_port", "http_port"])
def test_a_port_that_speaks_another_protocol_is_named_as_not_tls(
    config_path: Path, service: str, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue(service)
    data = _test_connection_on(config_path, port)
    error = data["status_error"]
    assert f"the server does not speak TLS on this port: 127.0.0.1:{port}" in error, error
    assert "WRONG_VERSION_NUMBER" not in error
    assert "IMAPS port (usually 993)" in error
    if service == "smtp_banner_port":
        assert "220 relay.test ESMTP ready" in error  # what the port said, so the operator recognises it
