"""The SMTP listener's group commit keeps the spool's crash rule: a message is
in the queue with its commit mark only once it is durable, never half."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.spool.queue import Spool


async def commit_many(committer: GroupCommitter, count: int) -> list:
    async def one(number: int):
        staged = await asyncio.to_thread(committer.stage, {"connection_id": "c1", "provenance": "smtp"})
        staged.write(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
        return await committer.commit(staged, smtp={"queue_id": staged.id})

    return await asyncio.gather(*(one(n) for n in range(count)))


@pytest.mark.parametrize("use_syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_committed_messages_are_in_the_queue_with_their_metadata(tmp_path: Path, use_syncfs: bool) -> None:
    spool = Spool(tmp_path / "spool")
    announced: list[str] = []
    spool.subscribe(lambda message: announced.append(message.id))
    committer = GroupCommitter(spool, use_syncfs=use_syncfs)
    messages = asyncio.run(commit_many(committer, 40))
    assert committer.batches < 40  # concurrent commits shared batches
    assert sorted(announced) == sorted(m.id for m in messages)
    pending = {m.id: m for m in spool.pending()}
    for message in messages:
        stored = pending[message.id]
        assert stored.metadata == message.metadata
        assert stored.metadata["smtp"]["queue_id"] == message.id
        assert stored.path.read_bytes().startswith(b"Subject: ")
        assert stored.metadata["size"] == stored.path.stat().st_size
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_with_several_lanes_each_message_is_acknowledged_only_after_a_sync_that_covers_it(tmp_path: Path) -> None:
    """Batches may sync at once (the SMTP listener's SYNC_LANES); a commit
    returns only after a sync that started once its mark was in the queue
    had ended."""
    import threading
    import time

    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool, lanes=3)
    queue = tmp_path / "spool" / "queue"
    covered: set[str] = set()  # marks in the queue when a finished sync began
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    def slow_sync(descriptor: int) -> None:
        marks = {p.stem for p in queue.glob("*.json")}
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.02)
        with lock:
            running["now"] -= 1
            covered.update(marks)

    committer.syncfs = slow_sync

    async def main() -> list:
        async def one(number: int):
            await asyncio.sleep(number * 0.002)  # arrivals spread over several syncs
            staged = await asyncio.to_thread(committer.stage, {"connection_id": "c1"})
            staged.write(f"Subject: {number}\r\n\r\nx\r\n".encode())
            message = await committer.commit(staged)
            with lock:
                assert message.id in covered, "acknowledged before a sync covered it"
            return message

        return await asyncio.gather(*(one(n) for n in range(60)))

    messages = asyncio.run(main())
    assert len({m.id for m in spool.pending()}) == 60 == len(messages)
    assert running["most"] > 1  # the lanes were used
    assert committer.batches < 60


def test_a_failed_sync_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)

    def broken_sync(descriptor: int) -> None:
        raise OSError(5, "syncfs failed: Input/output error")

    committer.syncfs = broken_sync
    with pytest.raises(OSError, match="Input/output error"):
        asyncio.run(commit_many(committer, 5))
    assert spool.pending() == []
    assert list((tmp_path / "spool" / "queue").iterdir()) == []


def test_aborted_message_leaves_no_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    staged = GroupCommitter(spool).stage({"connection_id": "c1"})
    staged.write(b"partial")
    staged.abort()
    staged.abort()  # twice is harmless
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
