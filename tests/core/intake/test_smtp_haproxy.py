"""SMTP behind a real HAProxy (``send-proxy-v2``), issue 15 item 5.

- A client bound to 127.0.0.2 reaches mailpipe through HAProxy (which
  connects from 127.0.0.1, the address in ``proxy_protocol_from``) and is
  seen as 127.0.0.2: by sender allow-lists and in the archived message's
  ``smtp`` facts; with one SMTP process and with ``--workers 2``.
- Two ``mailpipe serve`` nodes behind one HAProxy (roundrobin), a shared
  archive directory: every message that got ``250`` is archived exactly once,
  also when one node is killed with SIGKILL mid-run while holding
  acknowledged messages in its spool, which it delivers after its restart.

Forged and missing headers on direct connections: test_smtp_allowlist.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import RetryingClient, kill_node
from tests.support.helpers import ServerProcess, archived_files, child_pids, free_port, wait_until
from tests.support.peers.haproxy import HAProxy
from tests.support.peers.require import peer_missing
from tests.support.smtp import SmtpSetup, arrival, make_setup, pending_count, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"
BALANCER = "127.0.0.1"  # HAProxy's source towards the nodes


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("behind-haproxy"), smtp=f'proxy_protocol_from = ["{BALANCER}"]\n')
    setup.add("only2", "smtp_exchange", sender_servers="127.0.0.2")
    setup.add("only3", "smtp_exchange", sender_servers="127.0.0.3")
    workers = request.param
    setup.server = ServerProcess(setup.config, args=("--workers", str(workers)) if workers > 1 else ())
    setup.server.start(timeout=60)
    yield setup
    setup.stop()


def test_the_client_behind_haproxy_is_what_allow_lists_and_the_archive_see(node: SmtpSetup, haproxy) -> None:
    balancer = haproxy([("127.0.0.1", node.port)]).start()
    with smtplib.SMTP(balancer.host, balancer.port, timeout=60, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("exchange.contoso.test")
        client.mail(SENDER)
        code, text = client.rcpt(node.address("only3"))
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        assert b"sending server 127.0.0.2 is not allowed" in text
        client.rset()
        message = b"Subject: through haproxy\r\n\r\nbody " + os.urandom(8).hex().encode() + b"\r\n"
        code, reply, _ = send(client, SENDER, [node.address("only2")], message)
    assert code == 250, (code, reply)
    queue_id = queue_id_of(reply)
    [(raw, meta)] = wait_for_arrival(node.archive, queue_id)
    assert raw == message
    facts = arrival(meta, queue_id)["smtp"]
    assert facts["peer_ip"] == "127.0.0.2" and facts["balancer_ip"] == BALANCER, facts


def test_swaks_through_haproxy(node: SmtpSetup, haproxy) -> None:
    if shutil.which("swaks") is None:
        peer_missing("swaks is not installed (apt-get install swaks)")
    balancer = haproxy([("127.0.0.1", node.port)]).start()

    def swaks(to: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["swaks", "--server", f"{balancer.host}:{balancer.port}", "--local-interface", "127.0.0.2",
             "--from", SENDER, "--to", to, "--helo", "exchange.contoso.test", "--timeout", "60",
             "--header", "Subject: swaks behind haproxy"],
            capture_output=True, text=True, timeout=120,
        )

    accepted = swaks(node.address("only2"))
    assert accepted.returncode == 0 and "250 2.0.0 OK: queued as" in accepted.stdout, accepted.stdout
    refused = swaks(node.address("only3"))
    assert refused.returncode != 0 and "550 5.7.1 sending server 127.0.0.2 is not allowed" in refused.stdout


# --- two nodes, one killed --------------------------------------------------------------

MESSAGES = 200
#: Acknowledged messages after which node B's pipeline is frozen, and after which B is killed.
FREEZE_AT, KILL_AT = 40, 90


def _node(root: Path, archive: Path) -> SmtpSetup:
    """A node's own config and data dir, its archive the shared directory."""
    root.mkdir(parents=True)
    port = free_port()
    config = root / "mailpipe.toml"
    config.write_text(
        '[server]\ndata_dir = "data"\n\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\njournal_domain = "journal.test"\n'
        f'proxy_protocol_from = ["{BALANCER}"]\nhostname = "{root.name}.test"\n\n'
        "[pipeline]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n\n"
        f'[[sinks]]\ntype = "filesystem"\npath = "{archive}"\n\n[http]\nlisten = ""\n'
    )
    return SmtpSetup(root, config, port)


def test_two_nodes_behind_haproxy_one_killed_nothing_acknowledged_is_lost(tmp_path: Path, haproxy) -> None:
    archive = tmp_path / "shared-archive"  # the shared sink: a directory both nodes write
    a, b = (_node(tmp_path / name, archive) for name in ("node-a", "node-b"))
    connection = a.add("journal", "smtp_exchange", sender_servers="127.0.0.2")
    # One state for both nodes: node B starts from a copy of A's (the
    # PostgreSQL state store shares it for real; here the connection is all
    # that matters, and it does not change during the test).
    shutil.copytree(a.root / "data", b.root / "data")

    node_a = ServerProcess(a.config).start(timeout=60)
    node_b = ServerProcess(b.config).start(timeout=60)
    try:
        balancer: HAProxy = haproxy([("127.0.0.1", a.port), ("127.0.0.1", b.port)]).start()
        client = RetryingClient(balancer.host, balancer.port, connection["address"])
        frozen_pipeline: int | None = None
        for number in range(MESSAGES):
            if number == FREEZE_AT:
                # B keeps accepting (and acknowledging) but delivers nothing:
                # what it acknowledges from now on waits in its spool.
                [frozen_pipeline] = child_pids(node_b.process.pid)  # type: ignore[union-attr]
                os.kill(frozen_pipeline, signal.SIGSTOP)
            message = f"Subject: load {number}\r\nX-Nonce: {os.urandom(8).hex()}\r\n\r\nbody {number}\r\n".encode()
            if number == KILL_AT:
                # The kill cuts a transaction in the middle of its DATA: the
                # client hears nothing and sends the message again.
                cut = client.session_on("node-b.test")
                cut.mail(SENDER)
                cut.rcpt(connection["address"])
                assert cut.docmd("DATA")[0] == 354
                cut.send(message[:20])
                kill_node(node_b)
                with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
                    cut.send(message[20:] + b".\r\n")
                    cut.getreply()
                cut.close()
                client.retries += 1
            client.deliver(message)
        assert len(client.acknowledged) == MESSAGES
        left_in_b = pending_count(b)
        assert left_in_b > 0, "node B was killed with nothing in its spool: the test shows nothing"

        node_b.start(timeout=60)  # the restarted node drains its own spool
        wait_until(lambda: pending_count(a) == 0 and pending_count(b) == 0, timeout=120,
                   message="a node's spool was not drained")
        by_hash: dict[str, int] = {}
        for path in archived_files(archive):
            by_hash[path.stem] = by_hash.get(path.stem, 0) + 1
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
        missing = set(client.acknowledged) - set(by_hash)
        assert not missing, f"{len(missing)} acknowledged messages are not in the archive"
        assert all(count == 1 for count in by_hash.values())
        assert set(by_hash) == set(client.acknowledged)  # nothing else either
        print(f"\n{MESSAGES} messages, {client.retries} retries, {left_in_b} left in the killed node's spool")
    finally:
        node_a.stop()
        node_b.stop()
