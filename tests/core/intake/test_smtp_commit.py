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
