"""Issue 15 acceptance: three nodes on one machine, one PostgreSQL state store,
one S3 API server (moto) as the archive, Debian's HAProxy in front with
``send-proxy-v2``.

- A connection added through node A's CLI is used by node C; disabled through
  node B, it is refused by A and C. The test prints how long each change took
  to reach the other nodes (a figure for docs/scaling.md, not an assertion).
- 3,000 journal reports through HAProxy from a client that retries on 4xx and
  on a dropped connection; one node is killed with SIGKILL mid-run (its
  pipeline frozen first, so acknowledged mail waits in its spool) and
  restarted later. Every message that got ``250`` is in S3 exactly once, by
  SHA-256, nothing else is, and the restarted node drained its spool.
"""

from __future__ import annotations

import hashlib
import os
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support.cluster import RetryingClient, kill_node
from tests.support.helpers import ServerProcess, child_pids, cli, free_port, state_url_toml, wait_until
from tests.support.journal_samples import build_exchange_report
from tests.support.peers.haproxy import HAProxy
from tests.support.smtp import pending_count

BUCKET = "cluster-archive"
BALANCER = "127.0.0.1"  # HAProxy's source address towards the nodes
NODE_NAMES = ("node-a", "node-b", "node-c")
REPORTS = 3_000
#: Acknowledged reports after which node B's pipeline is frozen, B is killed, and B comes back.
FREEZE_AT, KILL_AT, RESTART_AT = 600, 1_000, 2_000
SENDERS = 4  # concurrent client threads


@dataclass
class Node:
    name: str
    root: Path
    config: Path
    port: int
    server: ServerProcess
    key: str

    def cli(self, *args: str) -> Any:
        """``mailpipe ARGS`` on this node (its config, the cluster's secret key)."""
        return cli(self.config, *args, env={"MAILPIPE_SECRET_KEY": self.key}, check=True).json


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, moto_s3: Any) -> Iterator[list[Node]]:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    key = Fernet.generate_key().decode()  # every node shares the secret key
    nodes = []
    for name in NODE_NAMES:
        root = tmp_path / name
        root.mkdir()
        port = free_port()
        config = root / "mailpipe.toml"
        config.write_text(
            '[server]\ndata_dir = "data"\n\n'
            f'[smtp]\nlisten = "127.0.0.1:{port}"\njournal_domain = "journal.test"\nhostname = "{name}.test"\n'
            f'proxy_protocol_from = ["{BALANCER}"]\n\n'
            "[pipeline]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n\n"
            f'[[sinks]]\ntype = "s3"\nname = "s3"\nbucket = "{BUCKET}"\nendpoint_url = "{moto_s3.endpoint_url}"\n'
            'prefix = "journal/"\n\n'
            f'{state_url_toml(postgres_url)}\n[http]\nlisten = ""\n'
        )
        nodes.append(Node(name, root, config, port, ServerProcess(config, env={"MAILPIPE_SECRET_KEY": key}), key))
    try:
        for node in nodes:
            node.server.start(timeout=90)
        yield nodes
    finally:
        for node in nodes:
            node.server.stop()


def accepts(node: Node, address: str) -> bool:
    """Does ``node`` accept ``address`` as a recipient now (RCPT 250)?"""
    with smtplib.SMTP("127.0.0.1", node.port, timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("exchange.contoso.test")
        client.mail("journal@contoso.com")
        code, _ = client.rcpt(address)
        client.rset()
    return code == 250


def seconds_until(condition: Any, message: str, since: float) -> float:
    """Seconds from ``since`` until ``condition`` holds (polled; the bound only ends a broken run)."""
    wait_until(condition, timeout=60, interval=0.05, message=message)
    return time.monotonic() - since


def test_a_change_on_one_node_reaches_the_others(cluster: list[Node]) -> None:
    a, b, c = cluster
    added = a.cli("connections", "add", "smtp_exchange", "--description", "added on A",
                  "--set", "sender_servers=127.0.0.2")
    address = added["address"]
    started = time.monotonic()
    a.cli("connections", "enable", added["id"])
    command = time.monotonic() - started
    reached_c = seconds_until(lambda: accepts(c, address), "node C accepts the connection enabled on node A", started)
    assert accepts(b, address)

    started = time.monotonic()
    b.cli("connections", "disable", added["id"])
    refused_a = seconds_until(lambda: not accepts(a, address), "node A refuses the connection disabled on B", started)
    refused_c = seconds_until(lambda: not accepts(c, address), "node C refuses the connection disabled on B", started)
    # Figures for docs/scaling.md (each includes the CLI command itself, a new Python process).
    print(f"\nenabled on A (the command took {command:.2f} s), used by C {reached_c:.2f} s after the command "
          f"started; disabled on B, refused by A after {refused_a:.2f} s and by C after {refused_c:.2f} s")


def s3_messages(moto_s3: Any) -> dict[str, int]:
    """SHA-256 of every archived message body -> how many .eml objects hold it."""
    client = moto_s3.client()
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="journal/"):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".eml"):
                body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                digest = hashlib.sha256(body).hexdigest()
                assert item["Key"].endswith(f"/{digest}.eml"), item["Key"]
                found[digest] = found.get(digest, 0) + 1
    return found


def test_three_nodes_behind_haproxy_one_killed_under_load_lose_nothing(
    cluster: list[Node], moto_s3: Any, haproxy: Any
) -> None:
    a, b, c = cluster
    connection = a.cli("connections", "add", "smtp_exchange", "--description", "journal",
                     "--set", "sender_servers=127.0.0.2")
    a.cli("connections", "enable", connection["id"])
    for node in cluster:
        wait_until(lambda node=node: accepts(node, connection["address"]), timeout=60,
                   message=f"{node.name} accepts the new connection")
    balancer: HAProxy = haproxy([("127.0.0.1", node.port) for node in cluster]).start()

    acknowledged: dict[str, bytes] = {}
    retries = [0]
    lock = threading.Lock()
    numbers = iter(range(REPORTS))
    events = {"frozen": threading.Event(), "killed": threading.Event(), "restarted": threading.Event()}
    left_in_b = [0]

    def milestones(count: int) -> None:
        """Run by whichever sender reaches a milestone (at most once each)."""
        if count >= FREEZE_AT and not events["frozen"].is_set():
            events["frozen"].set()
            assert b.server.process is not None
            [pipeline] = child_pids(b.server.process.pid)
            os.kill(pipeline, signal.SIGSTOP)  # B keeps acknowledging; its mail waits in its spool
        if count >= KILL_AT and not events["killed"].is_set():
            events["killed"].set()
            left_in_b[0] = pending_count(b)  # type: ignore[arg-type]  (a node has the root it needs)
            kill_node(b.server)
        if count >= RESTART_AT and not events["restarted"].is_set():
            events["restarted"].set()
            b.server.start(timeout=90)

    def sender() -> None:
        client = RetryingClient(balancer.host, balancer.port, connection["address"])
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                break
            unique = f"<load-{number}-{os.urandom(6).hex()}@contoso.com>"
            report = build_exchange_report(subject=f"load {number}", message_id=unique)
            client.deliver(report)
            with lock:
                acknowledged.update(client.acknowledged)
                client.acknowledged.clear()
                retries[0] += client.retries
                client.retries = 0
                milestones(len(acknowledged))

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1_800)
    assert not any(thread.is_alive() for thread in threads), "the senders did not finish"
    assert len(acknowledged) == REPORTS
    assert all(event.is_set() for event in events.values())
    assert left_in_b[0] > 0, "node B was killed with nothing in its spool: the test shows nothing"

    wait_until(lambda: all(pending_count(node) == 0 for node in cluster), timeout=300,  # type: ignore[arg-type]
               message="a node's spool was not drained (the restarted node B drains its own)")
    archived = s3_messages(moto_s3)
    missing = set(acknowledged) - set(archived)
    assert not missing, f"{len(missing)} acknowledged reports are not in S3"
    assert set(archived) == set(acknowledged)  # nothing else either
    assert all(count == 1 for count in archived.values())
    print(f"\n{REPORTS} reports, {retries[0]} retries, {left_in_b[0]} waiting in node B's spool when it was killed")
