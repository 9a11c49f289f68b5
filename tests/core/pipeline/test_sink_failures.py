"""The sink contract's two failures: an unavailable sink is waited for, a
rejected message is quarantined after max_attempts (issue 11, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.config import PipelineConfig, parse_config
from mailpipe.errors import ConfigError, MessageRejected, SinkUnavailable
from mailpipe.pipeline.delivery import Pipeline, SinkSlot, is_outage
from mailpipe.spool.queue import QUARANTINE, Spool
from tests.support.helpers import FlakySink

pytestmark = pytest.mark.anyio
TIGHT = PipelineConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.01)


async def test_an_unavailable_sink_is_retried_past_max_attempts_and_delivers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    down = FlakySink("down", failures=20, error=SinkUnavailable)
    pipeline = Pipeline(spool, [SinkSlot("down", down)], TIGHT)
    message = await spool.write_bytes(b"waits out the outage", {})
    for _ in range(21):
        await pipeline.process(message.id)
    assert spool.pending(QUARANTINE) == [] and spool.pending() == []
    assert down.stored == {message.id: b"waits out the outage"}
    assert pipeline.quarantined == 0


@pytest.mark.parametrize("error", [ConnectionRefusedError, TimeoutError])
async def test_builtin_connection_errors_count_as_unavailable(tmp_path: Path, error: type[Exception]) -> None:
    spool = Spool(tmp_path / "spool")
    pipeline = Pipeline(spool, [SinkSlot("down", FlakySink("down", failures=10, error=error))], TIGHT)
    message = await spool.write_bytes(b"x", {})
    for _ in range(5):
        await pipeline.process(message.id)
    state = spool.state(message.id)
    assert state.attempts == 5 and state.message_failures == 0 and state.outage_since
    assert spool.pending(QUARANTINE) == []


async def test_a_rejected_message_is_quarantined_after_max_attempts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    pipeline = Pipeline(spool, [SinkSlot("picky", FlakySink("picky", failures=99))], TIGHT)
    message = await spool.write_bytes(b"refused", {})
    for _ in range(3):
        await pipeline.process(message.id)
    assert [m.id for m in spool.pending(QUARANTINE)] == [message.id]
    assert spool.state(message.id, QUARANTINE).message_failures == 3


async def test_an_unknown_error_counts_toward_max_attempts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    pipeline = Pipeline(spool, [SinkSlot("buggy", FlakySink("buggy", failures=99, error=KeyError))], TIGHT)
    message = await spool.write_bytes(b"x", {})
    for _ in range(3):
        await pipeline.process(message.id)
    assert [m.id for m in spool.pending(QUARANTINE)] == [message.id]


async def test_an_outage_longer_than_outage_retry_for_quarantines(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    settings = PipelineConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.01, outage_retry_for=1e-9)
    pipeline = Pipeline(spool, [SinkSlot("down", FlakySink("down", failures=99, error=SinkUnavailable))], settings)
    message = await spool.write_bytes(b"x", {})
    await pipeline.process(message.id)  # starts the outage clock
    await pipeline.process(message.id)  # already longer than outage_retry_for
    assert [m.id for m in spool.pending(QUARANTINE)] == [message.id]


async def test_a_rejection_wins_over_an_outage_in_the_same_delivery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    down = FlakySink("down", failures=99, error=SinkUnavailable)
    picky = FlakySink("picky", failures=99)
    pipeline = Pipeline(spool, [SinkSlot("down", down), SinkSlot("picky", picky)], TIGHT)
    message = await spool.write_bytes(b"x", {})
    for _ in range(3):
        await pipeline.process(message.id)
    assert [m.id for m in spool.pending(QUARANTINE)] == [message.id]


def test_bare_error_texts_count_as_the_messages() -> None:
    assert is_outage(SinkUnavailable("down")) and not is_outage(MessageRejected("bad"))
    assert not is_outage("a bare error text from a third-party store_batch")


def test_retry_delay_is_jittered_and_capped() -> None:
    pipeline = Pipeline(Spool(Path("/nonexistent-never-written")), [SinkSlot("x", FlakySink())],
                        PipelineConfig(backoff_initial=1.0, backoff_max=300.0))
    delays = {round(pipeline.retry_delay(20), 6) for _ in range(50)}
    assert len(delays) > 1  # spread out, not every message at once
    assert all(1.0 <= delay <= 300.0 for delay in delays)


@pytest.mark.parametrize("text, seconds", [('"7d"', 604800.0), ('"12h"', 43200.0), ('"90s"', 90.0), ("30", 30.0)])
def test_outage_retry_for_reads_durations(text: str, seconds: float) -> None:
    config = parse_config(f"[pipeline]\noutage_retry_for = {text}\n", base=Path("/"), source="t")
    assert config.pipeline.outage_retry_for == seconds


def test_outage_retry_for_default_is_days_and_bad_values_are_explained() -> None:
    assert parse_config("", base=Path("/"), source="t").pipeline.outage_retry_for >= 86400
    with pytest.raises(ConfigError, match="a duration such as \"7d\""):
        parse_config('[pipeline]\noutage_retry_for = "forever"\n', base=Path("/"), source="t")
