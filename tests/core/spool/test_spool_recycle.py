"""Spool files are reused after delivery, and reuse never mixes messages."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anyio
import pytest

from mailpipe.spool import recycle
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.spool.recycle import FileRecycler
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import FREE, QUEUE, Spool
from mailpipe.spool.notify import SpoolAnnouncer, receive_announcements
from mailpipe.types import SinkContext

pytestmark = pytest.mark.anyio


def inodes(directory: Path) -> set[int]:
    return {entry.stat().st_ino for entry in directory.iterdir()}


@pytest.mark.parametrize("link", [True, False], ids=["linked-into-archive", "copied"])
async def test_delivered_files_are_reused_and_cut_to_the_new_message(tmp_path: Path, link: bool) -> None:
    spool = Spool(tmp_path / "spool")
    sink = FilesystemSink(
        "fs", {"path": str(tmp_path / "archive"), "link_from_spool": link}, SinkContext(str(tmp_path), str(tmp_path))
    )
    pipeline = Pipeline(spool, [SinkSlot("fs", sink)])
    long_message = b"Subject: long\r\n\r\n" + b"L" * 5000 + b"\r\n"
    first = await spool.write_bytes(long_message, {"connection_id": "c1"})
    spooled_inode = first.path.stat().st_ino
    await pipeline.drain()
    freed = inodes(tmp_path / "spool" / FREE)
    (archived_long,) = (tmp_path / "archive").rglob("*.eml")
    if link:
        # The archive holds the spooled file itself; only the metadata file is free for reuse.
        assert archived_long.stat().st_ino == spooled_inode and archived_long.stat().st_nlink == 1
        assert len(freed) == 1 and spooled_inode not in freed
    else:
        assert len(freed) == 2  # the message file and its metadata file
    assert spool.pending() == []

    # Two shorter messages through the group committer (the SMTP path):
    # they reuse the freed inodes, and hold only their own bytes.
    committer = GroupCommitter(spool)
    short = [b"Subject: short\r\n\r\nS\r\n", b"Subject: other\r\n\r\nO\r\n"]
    spooled = []
    for raw in short:
        staged = await committer.take({"connection_id": "c1"})
        staged.write(raw)
        spooled.append(await committer.commit(staged))
    committer.close()
    used = {m.path.stat().st_ino for m in spooled} | {
        (tmp_path / "spool" / QUEUE / f"{m.id}.json").stat().st_ino for m in spooled
    }
    assert freed & used, "no freed file was reused"
    for message, raw in zip(spooled, short):
        assert message.path.read_bytes() == raw
        metadata = json.loads((tmp_path / "spool" / QUEUE / f"{message.id}.json").read_text())
        assert metadata["sha256"] == hashlib.sha256(raw).hexdigest()
    await pipeline.drain()
    archived = sorted(p.read_bytes() for p in (tmp_path / "archive").rglob("*.eml"))
    assert archived == sorted([long_message, *short])
    assert first.id not in {m.id for m in spooled}


async def test_aborted_message_leaves_nothing_readable_in_a_reused_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = spool.writer({})
    writer.write(b"refused half message")
    writer.abort()
    assert not list((tmp_path / "spool" / "tmp").iterdir())
    message = await spool.write_bytes(b"ok", {})
    assert message.path.read_bytes() == b"ok"


def test_large_files_are_deleted_not_kept(tmp_path: Path) -> None:
    recycler = FileRecycler(tmp_path / "free")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (recycle.RECYCLE_MAX_BYTES + 1))
    small = tmp_path / "small"
    small.write_bytes(b"y")
    recycler.release(big)
    recycler.release(small)
    assert not big.exists() and not small.exists()
    assert len(os.listdir(tmp_path / "free")) == 1


def test_the_free_directory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recycle, "FREE_LIMIT", 3)
    recycler = FileRecycler(tmp_path / "free")
    for number in range(5):
        path = tmp_path / f"used{number}"
        path.write_bytes(b"z")
        recycler.release(path)
    assert len(os.listdir(tmp_path / "free")) == 3
    assert not list(tmp_path.glob("used*"))


def test_a_file_taken_by_another_process_is_skipped(tmp_path: Path) -> None:
    free = tmp_path / "free"
    first = FileRecycler(free)
    second = FileRecycler(free)
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"old")
        first.release(tmp_path / name)
    # ``second`` lists both, then ``first`` takes them away behind its back.
    assert second._take_name() is not None
    for target in ("t1", "t2"):
        descriptor, reused = first.open_new(tmp_path / target)
        os.close(descriptor)
        assert reused
    descriptor, reused = second.open_new(tmp_path / "t3")
    os.close(descriptor)
    assert not reused  # created afresh instead of failing


async def test_worker_announcements_reach_the_pipeline(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    received: list[str] = []
    good = "0123456789ab" * 2
    async with anyio.create_task_group() as group:
        group.start_soon(receive_announcements, root, received.append)
        announcer = SpoolAnnouncer(root)
        with anyio.fail_after(5):
            while not received:
                # Bogus entries (not spool ids) are ignored: the socket is a hint only.
                for candidate in ("../../etc/passwd", good + "\n" + good, good, "ZZZ"):
                    announcer.announce(candidate)
                await anyio.sleep(0.05)
        announcer.close()
        group.cancel_scope.cancel()
    assert set(received) == {good}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the processes that spool run asyncio
async def test_announcements_wait_while_the_pipelines_queue_is_full(tmp_path: Path) -> None:
    """A burst larger than a Unix datagram queue holds (10 datagrams) arrives
    whole: the sender coalesces ids and retries when the queue is full
    (elsewhere than on asyncio it sends at once and leaves the rest to the
    pipeline's rescan)."""
    import socket

    from mailpipe.spool.notify import socket_name

    root = tmp_path / "spool"
    root.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(socket_name(root))
    listener.setblocking(False)
    ids = [f"{n:024x}" for n in range(5000)]
    announcer = SpoolAnnouncer(root)
    for spool_id in ids:  # one turn of the event loop, as a group commit's batch
        announcer.announce(spool_id)
    await anyio.sleep(0.05)  # sent what fits; the rest waits for room
    queue_length = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    if queue_length < len(ids) // 160:  # (the usual 10) the burst cannot fit at once
        assert announcer._pending, "ids beyond the socket's queue should wait for room"
    received: list[str] = []
    with anyio.fail_after(10):
        while len(received) < len(ids):
            try:
                received.extend(listener.recv(1 << 16).decode().split(" "))
            except BlockingIOError:
                await anyio.sleep(0.002)
    assert received == ids
    announcer.close()
    listener.close()
