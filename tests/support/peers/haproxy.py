"""A private, real HAProxy in front of ``mailpipe serve`` nodes, for tests.

Why a real one: what mailpipe must get right behind a load balancer is
HAProxy's own PROXY protocol v2 header (``send-proxy-v2``), its health
checks and its behaviour when a node dies; a hand-made header only shows
what its author expected.

What this instance is: Debian's ``/usr/sbin/haproxy`` in the foreground
(``-db``) with a config generated in a private temporary directory, one
``mode tcp`` frontend on a free loopback port, and one backend that spreads
connections ``roundrobin`` over the nodes, each ``server`` line with
``send-proxy-v2``. Connections to the nodes leave from ``source`` (127.0.0.1
by default: the address the nodes list in ``proxy_protocol_from``).
Health checks speak SMTP through the PROXY protocol (``option smtpchk``
with ``check-send-proxy``), so a killed node leaves the rotation within
about a second, and ``option redispatch`` with ``retries`` sends a
connection that could not reach its node to another one.

Nothing outlives the tests: HAProxy gets SIGTERM from the kernel if the test
process dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .process import LOOPBACK, die_with_parent, free_port
from .require import peer_missing

HAPROXY_BINARY = "/usr/sbin/haproxy"

CONFIG = """\
global
    maxconn 512

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch

frontend smtp
    bind {host}:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option smtpchk HELO haproxy.test
{servers}
"""

SERVER = "    server {name} {address} send-proxy-v2 source {source} check check-send-proxy inter 500ms fall 1 rise 1\n"


class HAProxyError(RuntimeError):
    pass


class HAProxy:
    """HAProxy on ``host:port``, balancing over ``nodes`` (``(host, port)`` pairs)."""

    def __init__(self, nodes: list[tuple[str, int]], source: str = LOOPBACK, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = free_port(host)
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-haproxy-"))
        self.config = self.directory / "haproxy.cfg"
        servers = "".join(
            SERVER.format(name=f"node{number}", address=f"{node_host}:{node_port}", source=source)
            for number, (node_host, node_port) in enumerate(nodes, 1)
        )
        self.config.write_text(CONFIG.format(host=host, port=self.port, servers=servers))
        self.log = self.directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> "HAProxy":
        check = subprocess.run([HAPROXY_BINARY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise HAProxyError(f"haproxy refused the generated config:\n{check.stdout}{check.stderr}")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [HAPROXY_BINARY, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HAProxyError(f"haproxy exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise HAProxyError(f"haproxy did not listen on {self.host}:{self.port} within {timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def haproxy() -> Iterator[Callable[..., HAProxy]]:
    """A factory: ``haproxy([(host, port), ...]).start()``; every one started is
    stopped after the test. Skips (or fails with MAILPIPE_REQUIRE_PEERS=1)
    when Debian's haproxy is not installed."""
    if not os.access(HAPROXY_BINARY, os.X_OK):
        peer_missing(f"{HAPROXY_BINARY} is not installed (apt-get install haproxy)")
    started: list[HAProxy] = []

    def make(nodes: list[tuple[str, int]], source: str = LOOPBACK) -> HAProxy:
        balancer = HAProxy(nodes, source=source)
        started.append(balancer)
        return balancer

    yield make
    for balancer in started:
        balancer.close()
