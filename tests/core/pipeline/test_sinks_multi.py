"""Several sinks at once: filesystem + s3, required and optional, and quarantine.

The sinks are built from the operator's TOML exactly as ``mailpipe serve``
builds them (``Runtime.build_sinks``), and S3 is moto's server over HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.helpers import (
    ServerProcess,
    archived_files,
    cli,
    free_port,
    spool_messages,
    wait_until,
    with_pipeline,
    write_config,
)
from mailpipe.pipeline.delivery import Pipeline
from mailpipe.runtime import Runtime
from mailpipe.spool.queue import QUEUE

pytestmark = pytest.mark.peer

BUCKET = "mail-archive"
#: The server tests need no SMTP listener: load only the sinks.
SINKS_ONLY = {"MAILPIPE_LOAD_PLUGINS": "filesystem,s3"}


def s3_table(endpoint: str, required: bool = True, bucket: str = BUCKET) -> str:
    return (
        f'[[sinks]]\ntype = "s3"\nname = "cloud"\nrequired = {str(required).lower()}\n'
        f'bucket = "{bucket}"\nendpoint_url = "{endpoint}"\nmax_attempts = 1\n'
    )


FILESYSTEM = '[[sinks]]\ntype = "filesystem"\nname = "local"\npath = "archive"\n'


def s3_keys(client: Any) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_both_sinks_store_every_message(moto_s3: Any, tmp_path: Path, backend: str) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket=BUCKET)
    config = write_config(tmp_path, sinks=FILESYSTEM + s3_table(moto_s3.endpoint_url))
    spool_messages(config, 3)
    runtime = Runtime.open(str(config))

    async def deliver() -> None:
        slots = runtime.build_sinks()
        try:
            await Pipeline(runtime.spool, slots, runtime.config.pipeline).drain()
        finally:
            for slot in slots:
                await slot.sink.aclose()

    anyio.run(deliver, backend=backend)
    runtime.close()
    assert len(archived_files(tmp_path / "archive")) == 3
    assert len([k for k in s3_keys(client) if k.endswith(".eml")]) == 3
    assert runtime.spool.pending(QUEUE) == []


@pytest.mark.parametrize("failure", ["unreachable", "no bucket"])
def test_an_optional_failing_sink_does_not_hold_mail_back(
    moto_s3: Any, tmp_path: Path, failure: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if failure == "unreachable" else moto_s3.endpoint_url
    config = write_config(tmp_path, sinks=FILESYSTEM + s3_table(endpoint, required=False))
    ids = spool_messages(config, 3)
    runtime = Runtime.open(str(config))
    slots = runtime.build_sinks()
    assert [(s.name, s.required) for s in slots] == [("local", True), ("cloud", False)]

    async def deliver() -> Pipeline:
        pipeline = Pipeline(runtime.spool, slots, runtime.config.pipeline)
        try:
            await pipeline.drain()
        finally:
            for slot in slots:
                await slot.sink.aclose()
        return pipeline

    pipeline = anyio.run(deliver)
    runtime.close()
    assert pipeline.delivered == 3
    assert len(archived_files(tmp_path / "archive")) == 3
    assert runtime.spool.pending(QUEUE) == []
    assert all(runtime.spool.load(spool_id) is None for spool_id in ids)


def test_every_sink_optional_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, sinks=s3_table("http://127.0.0.1:9", required=False))
    result = cli(config, "sinks", "test")
    assert result.code == 1
    assert "every sink is optional; mark at least one `required = true`" in result.err


def test_required_must_be_a_boolean(tmp_path: Path) -> None:
    """`required = "false"` would otherwise read as true: a quoted string is truthy."""
    config = write_config(tmp_path, sinks=FILESYSTEM.replace('path = "archive"', 'path = "archive"\nrequired = "false"'))
    result = cli(config, "sinks", "list")
    assert result.code == 1
    assert "sink 'local': required must be true or false (without quotes)" in result.err


def test_a_required_sink_that_keeps_failing_quarantines_then_retry_delivers(
    moto_s3: Any, tmp_path: Path
) -> None:
    """A missing bucket is an outage the operator must fix (never a bad
    message): quarantined only after outage_retry_for."""
    client = moto_s3.client()
    config = with_pipeline(
        write_config(tmp_path, sinks=FILESYSTEM + s3_table(moto_s3.endpoint_url)),
        max_attempts=2, outage_retry_for='"1s"',
    )
    ids = spool_messages(config, 3)
    with ServerProcess(config, env=SINKS_ONLY) as server:

        def quarantined() -> list[dict[str, Any]]:
            rows = cli(config, "spool", "list", "--quarantine", check=True).json["messages"]
            return rows if len(rows) == 3 else []

        rows = wait_until(quarantined, timeout=60, message="messages were not quarantined")
        assert sorted(row["spool_id"] for row in rows) == sorted(ids)
        for row in rows:
            assert row["attempts"] >= 2  # more than max_attempts: an outage does not count toward it
            assert row["stored_in"] == ["local"]  # the filesystem copy is done and remembered
            assert f"sink cloud: sink 'cloud': bucket '{BUCKET}' does not exist at {moto_s3.endpoint_url}" in row["reason"]
        assert cli(config, "spool", "list", check=True).json["messages"] == []
        server.wait_for_log("message quarantined: its sink stayed unavailable longer than")

        client.create_bucket(Bucket=BUCKET)  # the operator fixes the sink...
        retried = cli(config, "spool", "retry", check=True).json  # ...and sends the mail back
        assert sorted(retried["retried"]) == sorted(ids)
        wait_until(lambda: len(s3_keys(client)) == 6, timeout=60, message="retried mail was not delivered")
        wait_until(lambda: cli(config, "spool", "list", check=True).json["messages"] == [], timeout=30)
        assert cli(config, "spool", "list", "--quarantine", check=True).json["messages"] == []
        assert server.stop() == 0
    assert len(archived_files(tmp_path / "archive")) == 3
    metadata = [json.loads(client.get_object(Bucket=BUCKET, Key=k)["Body"].read())
                for k in s3_keys(client) if k.endswith(".json")]
    assert sorted(m["arrivals"][0]["spool_id"] for m in metadata) == sorted(ids)
