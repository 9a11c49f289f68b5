"""Store outage: the S3 API goes away while `mailpipe serve` runs and mail keeps coming.

Mail comes in over SMTP to an Office 365 journaling connection, so the
server really is answering 250 to journal reports during the outage.
The bucket is versioned: every PUT leaves a version, so "one version per
key" proves that no message was uploaded twice, and "every key present"
that none was lost.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import ServerProcess, cli, smtp_port_of, spool_messages, wait_until, with_pipeline, write_config

pytestmark = pytest.mark.peer

BUCKET = "mail-archive"
PLUGINS = {"MAILPIPE_LOAD_PLUGINS": "smtp_o365,s3"}
#: moto accepts any secret; a distinctive one shows whether it ever reaches a log line.
SECRET = {"AWS_ACCESS_KEY_ID": "AKIAOUTAGETEST0000", "AWS_SECRET_ACCESS_KEY": "never-in-a-log-0d9f2b7c"}


def versions_by_key(client: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=BUCKET):
        for version in page.get("Versions", []):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def test_outage_keeps_mail_spooled_and_delivers_each_once(moto_s3: Any, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    sinks = (
        f'[[sinks]]\ntype = "s3"\nname = "cloud"\nbucket = "{BUCKET}"\n'
        f'endpoint_url = "{moto_s3.endpoint_url}"\nmax_attempts = 1\nconnect_timeout = 2\n'
    )
    config = write_config(tmp_path, sinks=sinks)
    # never quarantine during this outage: the point is that mail waits in the spool
    config.write_text(config.read_text().replace("[pipeline]\n", "[pipeline]\nmax_attempts = 100000\n", 1))
    connection = cli(config, "connections", "add", "smtp_o365", "--description", "journal",
                     "--set", "undeliverable_journal_address=journal-ndr@example.com", check=True).json
    sent: list[bytes] = []

    def send(count: int) -> None:
        with smtplib.SMTP("127.0.0.1", smtp_port_of(config), timeout=30) as smtp:
            for _ in range(count):
                index = len(sent)
                raw = f"Subject: outage {index}\r\nMessage-ID: <{index}@outage.test>\r\n\r\nbody {index}\r\n"
                refused = smtp.sendmail("journal-ndr@example.com", [connection["address"]], raw.encode())
                assert refused == {}  # 250: durable in the spool, whatever the store is doing
                sent.append(raw.encode())

    cli(config, "connections", "enable", connection["id"], check=True)
    with ServerProcess(config, env={**PLUGINS, **SECRET}) as server:
        send(5)
        wait_until(lambda: len(versions_by_key(client)) == 10, timeout=60, message="first mail not delivered")

        send(10)  # mail in flight...
        moto_s3.stop()  # ...when the store goes away (connections refused, state kept)
        send(10)  # and mail keeps coming during the outage: every one answered 250
        queued = wait_until(
            lambda: [r for r in cli(config, "spool", "list", check=True).json["messages"] if r["attempts"] >= 1],
            timeout=60,
            message="no delivery was attempted and failed during the outage",
        )
        assert queued and all("cannot reach the S3 endpoint" in r["reason"] for r in queued)
        server.wait_for_log("sink unavailable; will retry")
        assert cli(config, "spool", "list", "--quarantine", check=True).json["messages"] == []

        moto_s3.start()  # the store is back on the same port
        wait_until(lambda: cli(config, "spool", "list", check=True).json["messages"] == [], timeout=120,
                   message="spooled mail was not delivered after the store came back")
        assert server.stop() == 0
        log = "\n".join(server.lines)
        assert SECRET["AWS_SECRET_ACCESS_KEY"] not in log and SECRET["AWS_ACCESS_KEY_ID"] not in log

    counts = versions_by_key(client)
    assert len(counts) == 2 * len(sent)  # an .eml and a .json per message: none lost
    assert set(counts.values()) == {1}  # one upload per object: none duplicated
    import hashlib

    expected = {hashlib.sha256(raw).hexdigest() for raw in sent}
    stored = {key.rsplit("/", 1)[1][: -len(".eml")] for key in counts if key.endswith(".eml")}
    assert stored == expected


def test_an_outage_longer_than_max_attempts_allows_needs_nobody(moto_s3: Any, tmp_path: Path) -> None:
    """Issue 11, item 3: with max_attempts = 3 and backoff from 0.05 s, the
    old pipeline quarantined every message within about a second of the outage.
    An unavailable store is waited for instead; nothing is quarantined and no
    `spool retry` is needed when it comes back."""
    client = moto_s3.client()
    client.create_bucket(Bucket=BUCKET)
    sinks = (
        f'[[sinks]]\ntype = "s3"\nname = "cloud"\nbucket = "{BUCKET}"\n'
        f'endpoint_url = "{moto_s3.endpoint_url}"\nmax_attempts = 1\nconnect_timeout = 2\n'
    )
    config = with_pipeline(write_config(tmp_path, sinks=sinks), max_attempts=3)
    moto_s3.stop()
    ids = spool_messages(config, 4, tag="outage")
    with ServerProcess(config, env={"MAILPIPE_LOAD_PLUGINS": "filesystem,s3"}) as server:
        # far more failed deliveries than max_attempts: the old rule would have quarantined
        wait_until(
            lambda: (rows := cli(config, "spool", "list", check=True).json["messages"]) and all(r["attempts"] > 3 * 3 for r in rows),
            timeout=120, interval=0.2, message="deliveries were not retried through the outage",
        )
        assert cli(config, "spool", "list", "--quarantine", check=True).json["messages"] == []
        server.wait_for_log("sink unavailable; will retry")
        moto_s3.start()
        wait_until(lambda: cli(config, "spool", "list", check=True).json["messages"] == [], timeout=120,
                   message="mail was not delivered when the store came back")
        assert cli(config, "spool", "list", "--quarantine", check=True).json["messages"] == []
        assert server.stop() == 0
        assert not [line for line in server.lines if "quarantined" in line]
    assert len(versions_by_key(client)) == 2 * len(ids)
