"""A sink's optional abilities are declared protocols (mailpipe.types): the
host recognises a batch store and a readable archive by ``isinstance``, not
by probing attribute names (issue 12, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import FlakySink
from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import Spool, SpooledMessage
from mailpipe.types import BatchSink, Failure, ReadableArchive, Sink, SinkContext

pytestmark = pytest.mark.anyio


class BulkSink(FlakySink):
    """A third party's batch store: records each call's batch."""

    def __init__(self) -> None:
        super().__init__("bulk")
        self.batches: list[list[str]] = []

    async def store_batch(self, messages: list[SpooledMessage]) -> dict[str, Failure]:
        self.batches.append([m.id for m in messages])
        first, *rest = messages
        for message in rest:
            self.stored[message.id] = message.path.read_bytes()
        return {first.id: "the vendor refused the first one"}


def test_the_protocols_describe_the_builtin_and_third_party_sinks(tmp_path: Path) -> None:
    filesystem = FilesystemSink("fs", {"path": str(tmp_path / "archive")}, SinkContext(str(tmp_path), str(tmp_path)))
    assert isinstance(filesystem, BatchSink) and isinstance(filesystem, ReadableArchive)
    plain = FlakySink("plain")
    assert isinstance(plain, Sink)
    assert not isinstance(plain, BatchSink) and not isinstance(plain, ReadableArchive)
    assert isinstance(BulkSink(), BatchSink) and not isinstance(BulkSink(), ReadableArchive)


async def test_a_batch_sink_gets_the_batch_in_one_call_and_its_failures_count(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    bulk, plain = BulkSink(), FlakySink("plain")
    pipeline = Pipeline(spool, [SinkSlot("bulk", bulk), SinkSlot("plain", plain)])
    ids = [(await spool.write_bytes(f"message {n}".encode(), {})).id for n in range(3)]
    await pipeline.process_batch(ids)
    assert bulk.batches == [ids]
    assert bulk.calls == 0  # never asked one by one
    assert set(plain.stored) == set(ids)  # not a BatchSink: one store each
    assert [m.id for m in spool.pending()] == [ids[0]]  # the refused one waits for a retry
    assert spool.state(ids[0]).last_error.endswith("the vendor refused the first one")
