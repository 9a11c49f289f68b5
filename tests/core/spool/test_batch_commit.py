"""A batch already in memory (an IMAP collector's fetched batch) is committed
in one call: durable before the call returns, all or nothing, and what it
leaves in the spool is what the pipeline and recovery expect."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import anyio
import pytest

from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.spool.layout import BOOT_KEY
from mailpipe.spool.queue import Spool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def bodies(count: int) -> list[bytes]:
    return [f"Subject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(count)]


async def test_a_batch_is_in_the_queue_with_marks_and_announced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    announced: list[str] = []
    spool.subscribe(lambda message: announced.append(message.id))
    committer = GroupCommitter(spool)
    items = [(body, {"connection_id": "c1", "imap": {"uid": n}}) for n, body in enumerate(bodies(5))]
    messages = await committer.commit_batch(items)
    assert [m.metadata["imap"]["uid"] for m in messages] == [0, 1, 2, 3, 4]
    assert announced == [m.id for m in messages]
    pending = {m.id: m for m in spool.pending()}
    assert set(pending) == set(announced)
    for message, body in zip(messages, bodies(5)):
        assert message.path.read_bytes() == body
        mark = json.loads((tmp_path / "spool" / "queue" / f"{message.id}.json").read_text())
        assert mark["sha256"] == hashlib.sha256(body).hexdigest() and mark["size"] == len(body)
        assert mark["connection_id"] == "c1" and "received_at" in mark
        if committer.syncfs is not None:
            assert BOOT_KEY in mark  # checked after a machine restart, as group-committed marks are
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


async def test_the_call_returns_only_after_the_sync(tmp_path: Path) -> None:
    """Durability order: nothing is reported spooled (so nothing acted on at
    the source) before the batch's filesystem sync has finished."""
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    assert committer.syncfs is not None, "this machine has no syncfs; the test needs the batched path"
    real_sync = committer.syncfs
    sync_started, release_sync = threading.Event(), threading.Event()

    def slow_sync(descriptor: int) -> None:
        sync_started.set()
        release_sync.wait(30)
        real_sync(descriptor)

    committer.syncfs = slow_sync
    returned: list[int] = []

    async def commit() -> None:
        returned.append(len(await committer.commit_batch([(b, {}) for b in bodies(3)])))

    async with anyio.create_task_group() as group:
        group.start_soon(commit)
        await anyio.to_thread.run_sync(sync_started.wait, 30)
        await anyio.sleep(0.05)
        assert returned == []  # still inside the sync
        release_sync.set()
    assert returned == [3]


async def test_a_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    announced: list[str] = []
    spool.subscribe(lambda message: announced.append(message.id))

    def failing_sync(descriptor: int) -> None:
        raise OSError(5, "I/O error (injected)")

    committer.syncfs = failing_sync
    with pytest.raises(OSError, match="injected"):
        await committer.commit_batch([(b, {}) for b in bodies(4)])
    assert announced == []
    for directory in ("queue", "tmp"):
        assert list((tmp_path / "spool" / directory).iterdir()) == []


async def test_without_syncfs_each_file_is_fsynced(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool, use_syncfs=False)
    messages = await committer.commit_batch([(b, {}) for b in bodies(2)])
    assert [m.path.read_bytes() for m in messages] == bodies(2)
    marks = [json.loads(m.path.with_suffix(".json").read_text()) for m in messages]
    assert all(BOOT_KEY not in mark for mark in marks)  # trusted by order, not by a later check


async def test_a_bare_message_file_of_an_interrupted_batch_is_removed_at_start(tmp_path: Path) -> None:
    """A process killed between a message's bytes and its mark leaves a bare
    ``queue/ID.eml``: not a message (never acknowledged), removed by recovery."""
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool" / "queue" / "0123456789abcdef01234567.eml").write_bytes(b"half")
    spool.recover()
    assert spool.pending() == []
    assert not (tmp_path / "spool" / "queue" / "0123456789abcdef01234567.eml").exists()
