"""Several ``mailpipe serve`` nodes for the scaling tests: killing a whole
node, and a client that behaves like an MTA towards a load balancer."""

from __future__ import annotations

import hashlib
import os
import signal
import smtplib
import time

from tests.support.helpers import ServerProcess, child_pids
from tests.support.smtp import send

SENDER = "journal@contoso.com"


def kill_node(server: ServerProcess) -> None:
    """kill -9 of the whole node: its pipeline process first (else it would
    get the parent-death SIGTERM and stop cleanly), then the server."""
    assert server.process is not None
    for child in child_pids(server.process.pid):
        os.kill(child, signal.SIGKILL)
    server.kill()


class RetryingClient:
    """An MTA's behaviour in small: a message is sent until it gets ``250``;
    a 4xx reply or a dropped or refused connection means try again."""

    def __init__(self, host: str, port: int, recipient: str) -> None:
        self.host, self.port, self.recipient = host, port, recipient
        self.acknowledged: dict[str, bytes] = {}  # sha256 -> message
        self.retries = 0

    def connect(self) -> smtplib.SMTP:
        client = smtplib.SMTP(self.host, self.port, timeout=30, source_address=("127.0.0.2", 0))
        client.ehlo("exchange.contoso.test")
        return client

    def session_on(self, node: str, attempts: int = 50) -> smtplib.SMTP:
        """A session that HAProxy gave to ``node`` (known by its EHLO name)."""
        for _ in range(attempts):
            client = self.connect()
            if client.ehlo_resp and client.ehlo_resp.startswith(node.encode()):
                return client
            client.quit()
        raise AssertionError(f"HAProxy gave no session to {node} in {attempts} attempts")

    def deliver(self, message: bytes, attempts: int = 200) -> None:
        for _ in range(attempts):
            try:
                with self.connect() as client:
                    code, reply, _ = send(client, SENDER, [self.recipient], message)
            except (smtplib.SMTPException, OSError):
                code, reply = 0, "connection dropped"
            if code == 250:
                self.acknowledged[hashlib.sha256(message).hexdigest()] = message
                return
            assert code == 0 or 400 <= code < 500, (code, reply)  # a 5xx would lose the message
            self.retries += 1
            time.sleep(0.2)
        raise AssertionError(f"a message got no 250 in {attempts} attempts")
