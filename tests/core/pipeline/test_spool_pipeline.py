"""Spool and pipeline, on asyncio and on trio."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from mailpipe.config import PipelineConfig
from mailpipe.pipeline.delivery import Pipeline, SinkSlot, retry_quarantined
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import QUARANTINE, QUEUE, Spool, SpooledMessage
from mailpipe.types import SinkContext, TestResult

from tests.support.helpers import FlakySink

pytestmark = pytest.mark.anyio
FAST = PipelineConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.01, concurrency=2)


def fs_sink(tmp_path: Path) -> FilesystemSink:
    return FilesystemSink("fs", {"path": str(tmp_path / "archive")}, SinkContext(str(tmp_path), str(tmp_path)))


async def test_committed_message_is_durable_and_exact(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    raw = b"Subject: t\r\n\r\nbody \x00 with NUL and \xff 8-bit\nbare LF\r\n"
    message = await spool.write_bytes(raw, {"connection_id": "c1"})
    assert message.path.read_bytes() == raw
    metadata = json.loads((tmp_path / "spool" / QUEUE / f"{message.id}.json").read_text())
    assert metadata["size"] == len(raw)
    assert metadata["connection_id"] == "c1"
    import hashlib

    assert metadata["sha256"] == hashlib.sha256(raw).hexdigest()
    assert not list((tmp_path / "spool" / "tmp").iterdir())


async def test_streamed_writer_and_abort(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = spool.writer({"connection_id": "c1"})
    for piece in (b"a" * 1000, b"b" * 1000):
        writer.write(piece)
    writer.abort()
    assert spool.pending() == []
    assert not list((tmp_path / "spool" / "tmp").iterdir())
    message = await spool.write_chunks([b"x" * 10, b"y" * 10], {})
    assert message.path.read_bytes() == b"x" * 10 + b"y" * 10


async def test_recover_drops_unacknowledged_files_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = await spool.write_bytes(b"kept", {})
    (tmp_path / "spool" / "tmp" / "half.eml").write_bytes(b"half written")
    (tmp_path / "spool" / QUEUE / "orphan.eml").write_bytes(b"renamed, never committed")
    assert spool.recover() == 2
    assert [m.id for m in spool.pending()] == [kept.id]


async def test_pipeline_delivers_to_every_sink_and_empties_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    memory = FlakySink("memory")
    sink = fs_sink(tmp_path)
    pipeline = Pipeline(spool, [SinkSlot("fs", sink), SinkSlot("memory", memory)], FAST)
    messages = [await spool.write_bytes(f"Subject: {i}\r\n\r\nx\r\n".encode(), {"connection_id": "c1"}) for i in range(5)]
    await pipeline.drain()
    assert spool.pending() == []
    assert set(memory.stored) == {m.id for m in messages}
    assert len(list(sink.entries())) == 5


async def test_concurrent_run_delivers_what_arrives(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    memory = FlakySink("memory", failures=2)
    pipeline = Pipeline(spool, [SinkSlot("memory", memory)], FAST)
    async with anyio.create_task_group() as group:
        await group.start(pipeline.run)
        for i in range(20):
            await spool.write_bytes(b"m%d" % i, {})
        with anyio.fail_after(20):
            while len(memory.stored) < 20 or spool.pending_ids():
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert len(memory.stored) == 20


async def test_retry_with_backoff_then_success(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    memory = FlakySink("memory", failures=2)
    pipeline = Pipeline(spool, [SinkSlot("memory", memory)], FAST)
    message = await spool.write_bytes(b"retry me", {})
    await pipeline.process(message.id)
    state = spool.state(message.id)
    assert state.attempts == 1 and "memory is down" in state.last_error
    assert state.next_attempt > 0
    await pipeline.process(message.id)
    await pipeline.process(message.id)
    assert memory.stored == {message.id: b"retry me"}
    assert spool.pending() == []


async def test_quarantine_after_n_failures_and_retry_from_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    broken = FlakySink("broken", failures=3)
    pipeline = Pipeline(spool, [SinkSlot("broken", broken)], FAST)
    message = await spool.write_bytes(b"doomed for now", {})
    for _ in range(3):
        await pipeline.process(message.id)
    assert spool.pending() == []
    quarantined = spool.pending(QUARANTINE)
    assert [m.id for m in quarantined] == [message.id]
    state = spool.state(message.id, QUARANTINE)
    assert state.attempts == 3 and state.quarantined_at
    assert "sink broken: broken is down (call 3)" in state.last_error
    # the operator fixes the sink and retries
    assert retry_quarantined(spool) == [message.id]
    await pipeline.drain()
    assert broken.stored == {message.id: b"doomed for now"}
    assert spool.pending(QUARANTINE) == [] and spool.pending() == []


async def test_a_sink_that_confirmed_is_not_asked_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    good, bad = FlakySink("good"), FlakySink("bad", failures=1)
    pipeline = Pipeline(spool, [SinkSlot("good", good), SinkSlot("bad", bad)], FAST)
    message = await spool.write_bytes(b"x", {})
    await pipeline.process(message.id)
    assert spool.state(message.id).stored_in == ["good"]
    # a new pipeline (a restart) reads the recorded progress
    again = Pipeline(spool, [SinkSlot("good", good), SinkSlot("bad", bad)], FAST)
    await again.process(message.id)
    assert good.calls == 1 and bad.calls == 2
    assert spool.pending() == []


async def test_optional_sink_does_not_hold_messages_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    required, optional = FlakySink("required"), FlakySink("optional", failures=10**6)
    pipeline = Pipeline(spool, [SinkSlot("required", required), SinkSlot("optional", optional, required=False)], FAST)
    message = await spool.write_bytes(b"x", {})
    await pipeline.process(message.id)
    assert message.id in required.stored
    assert spool.pending() == [] and spool.pending(QUARANTINE) == []


async def test_restart_delivers_what_was_spooled_before(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = await spool.write_bytes(b"before the crash", {})
    # a new process: new Spool and Pipeline objects on the same directory
    reopened = Spool(tmp_path / "spool")
    memory = FlakySink("memory")
    await Pipeline(reopened, [SinkSlot("memory", memory)], FAST).drain()
    assert memory.stored == {first.id: b"before the crash"}


async def test_a_failing_enricher_never_holds_a_message_back(tmp_path: Path) -> None:
    calls: list[str] = []
    seen: list[dict[str, Any]] = []

    def boom(message: SpooledMessage) -> dict[str, Any]:
        calls.append(message.id)
        raise ValueError("cannot parse")

    class Recording(FlakySink):
        async def store(self, message: SpooledMessage) -> None:
            seen.append(dict(message.metadata))
            await super().store(message)

    spool = Spool(tmp_path / "spool")
    memory = Recording("memory", failures=1)
    pipeline = Pipeline(spool, [SinkSlot("memory", memory)], FAST, enrichers=[boom])
    message = await spool.write_bytes(b"\x00\x01 not mail at all", {})
    await pipeline.process(message.id)
    await pipeline.process(message.id)
    assert calls == [message.id, message.id]  # parsed again on retry, never persisted half-done
    assert memory.stored[message.id] == b"\x00\x01 not mail at all"
    assert seen[-1]["warnings"] == ["boom failed: cannot parse"]


async def test_batches_reach_store_batch_and_partial_failures_are_retried(tmp_path: Path) -> None:
    class Batching(FlakySink):
        def __init__(self) -> None:
            super().__init__("batching")
            self.batches: list[int] = []

        async def store_batch(self, messages: list[SpooledMessage]) -> dict[str, str]:
            self.batches.append(len(messages))
            errors = {}
            for message in messages:
                if message.path.read_bytes() == b"bad" and self.calls == 0:
                    errors[message.id] = "refused once"
                else:
                    self.stored[message.id] = message.path.read_bytes()
            self.calls += 1
            return errors

    spool = Spool(tmp_path / "spool")
    sink = Batching()
    pipeline = Pipeline(spool, [SinkSlot("batching", sink), SinkSlot("fs", fs_sink(tmp_path))], FAST)
    messages = [await spool.write_bytes(b"m%d" % i, {"connection_id": "c"}) for i in range(10)]
    bad = await spool.write_bytes(b"bad", {"connection_id": "c"})
    await pipeline.process_batch([m.id for m in messages] + [bad.id])
    assert sink.batches == [11]
    assert [m.id for m in spool.pending()] == [bad.id]
    assert spool.state(bad.id).stored_in == ["fs"]
    await pipeline.process_batch([bad.id])
    assert spool.pending() == [] and len(sink.stored) == 11
    assert len(list(fs_sink(tmp_path).entries())) == 11


def test_pipeline_refuses_only_optional_sinks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one sink must be required"):
        Pipeline(Spool(tmp_path / "s"), [SinkSlot("x", FlakySink(), required=False)])


async def test_commit_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledgement only after fsync of the data, the metadata and the queue directory."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    spool = Spool(tmp_path / "spool")
    message = await spool.write_bytes(b"x", {})
    assert any(p.endswith(f"{message.id}.eml") for p in synced)
    assert any(p.endswith(".json.") or ".json." in p for p in synced)  # metadata temp file
    assert str(tmp_path / "spool" / QUEUE) in synced
