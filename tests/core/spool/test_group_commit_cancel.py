"""One writer of the shared group committer cancelled with commits pending
(an IMAP collector whose server crashed) must not break the next writer
(another collector, an SMTP session) of the same process."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from mailpipe.spool.group_commit import GroupCommitter, StagedMessage
from mailpipe.spool.queue import Spool

pytestmark = pytest.mark.anyio


async def commit_or_abort(committer: GroupCommitter, body: bytes, connection_id: str) -> str:
    """What the server's collect context does: abort the staged files on any failure."""
    staged = await committer.take({"connection_id": connection_id})
    try:
        staged.write(body)
        return (await committer.commit(staged)).id
    except BaseException:
        staged.abort()
        raise


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_cancelled_writer_with_pending_commits_does_not_break_the_next(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    assert committer.syncfs is not None, "this machine has no syncfs; the test needs the batched path"
    real_sync = committer.syncfs
    release_sync = threading.Event()
    sync_started = threading.Event()

    def slow_sync(descriptor: int) -> None:
        sync_started.set()
        release_sync.wait(30)
        real_sync(descriptor)

    committer.syncfs = slow_sync
    first_done: list[str] = []

    async def first() -> None:
        first_done.append(await commit_or_abort(committer, b"Subject: first\r\n\r\nx\r\n", "healthy"))

    async with anyio.create_task_group() as outer:
        # A batch of one holds the only lane while its sync is slow ...
        outer.start_soon(first)
        await anyio.to_thread.run_sync(sync_started.wait, 30)
        # ... so the crashed collector's commits queue up behind it,
        async with anyio.create_task_group() as crashed:
            for number in range(20):
                crashed.start_soon(commit_or_abort, committer, f"Subject: {number}\r\n\r\n".encode(), "crashed")
            await anyio.wait_all_tasks_blocked()
            # ... and its task group is cancelled (the server went away).
            crashed.cancel_scope.cancel()
        committer.syncfs = real_sync
        release_sync.set()
    assert len(first_done) == 1

    # The next writer, from another connection, commits normally.
    survivors = [await commit_or_abort(committer, f"Subject: next {n}\r\n\r\n".encode(), "healthy") for n in range(3)]
    queued = {m.id: m for m in spool.pending()}
    assert set(queued) == {*first_done, *survivors}
    assert all(m.metadata["connection_id"] == "healthy" for m in queued.values())
    # Nothing of the cancelled writer was left behind in tmp/ or the queue.
    committer.close()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


async def test_an_aborted_entry_in_a_batch_is_dropped_not_fatal(tmp_path: Path) -> None:
    """Even if an aborted message reached a batch, the others in it are committed."""
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    good: StagedMessage = await committer.take({"connection_id": "a"})
    bad: StagedMessage = await committer.take({"connection_id": "b"})
    good.write(b"Subject: good\r\n\r\n")
    bad.write(b"Subject: bad\r\n\r\n")

    results: dict[str, object] = {}

    async def commit(name: str, staged: StagedMessage) -> None:
        try:
            results[name] = await committer.commit(staged)
        except Exception as error:  # noqa: BLE001 - recorded for the assertions
            results[name] = error

    async with anyio.create_task_group() as group:
        group.start_soon(commit, "good", good)
        group.start_soon(commit, "bad", bad)
        bad.abort()  # before either task ran: both are queued for one batch
    assert not isinstance(results["good"], Exception), results["good"]
    assert isinstance(results["bad"], Exception)
    assert [m.id for m in spool.pending()] == [good.id]
