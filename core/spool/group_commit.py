"""Group commit: many sessions' messages made durable by one filesystem sync.

The spool's own ``SpoolWriter.commit`` fsyncs each message file and its
metadata file one after the other, then the queue directory: three journal
commits in a row per message. With 20 SMTP sessions that caps intake near
600 messages/s on an ordinary disk, far below what SMTP alone can do.

The SMTP listener and the collectors commit through :class:`GroupCommitter`
instead. Every session whose message ended while the previous batch was
being synced joins the next batch, and a batch is made durable at once:

1. close each message file and rename it into ``queue/``; write its
   metadata into its commit mark in ``tmp/`` and rename that into
   ``queue/`` (both files were created ahead, in a pool, before DATA
   began: see :class:`StagedMessage` and ``GroupCommitter.take``);
2. **syncfs** the spool's filesystem (Linux ≥ 2.6.39; errors are reported
   since 5.8): data, names and metadata of the whole batch are durable.

Only then is any client in the batch told ``250``. Each mark records the
boot it was written in: a machine that stops during step 2 may come back
with a batch's names but not all of its bytes, and mailpipe.spool.check
finds those at the next start by size and sha256 (they were never
acknowledged). A process that dies during a batch leaves whole files (the
page cache survives it): at worst a message the sender was not told about,
which it sends again.

Where ``syncfs`` is missing (not Linux), each file is fsynced before its
mark is renamed, and the queue directory after: the order alone makes the
mark trustworthy, and no boot is recorded.

See mailpipe.spool.durability for what ``syncfs`` costs and guarantees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import anyio
import anyio.to_thread

from mailpipe.spool.disk_space import SpoolFull, storage_full
from mailpipe.spool.durability import SYNCFS, encode_commit_mark, sync_filesystem_of, write_descriptor
from mailpipe.spool.queue import QUEUE, TMP, Spool, SpooledMessage, fsync_directory, unlink_if_present
from mailpipe.spool.check import current_boot_id
from mailpipe.spool.batch_commit import BatchItem, make_durable, remove_files, write_files



#: Staged messages created ahead at once (see GroupCommitter.take).
POOL_SIZE = 32
#: Messages of a batch written between two turns of the event loop.
BATCH_SLICE = 50


class StagedMessage:
    """One message being received: its spool writer plus its commit-mark file,
    created together before the data arrives so that committing has no file
    to create (creating files is what waits longest on a busy journal)."""

    def __init__(self, spool: Spool, metadata: dict[str, Any]) -> None:
        self.writer = spool.writer(metadata)
        self.mark_path = f"{spool.root_text}/{TMP}/{self.writer.id}.json.commit"
        try:
            descriptor, self.mark_reused = spool.recycler.open_new(self.mark_path)
            self.mark_descriptor: int | None = descriptor
        except BaseException:
            self.writer.abort()
            raise

    @property
    def id(self) -> str:
        return self.writer.id

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def abort(self) -> None:
        """Forget a message that was not acknowledged (refused, client gone)."""
        if self.writer.done:
            return
        self.writer.abort()
        self._close_mark()
        self.writer.spool.recycler.release(self.mark_path)

    def _close_mark(self) -> None:
        if self.mark_descriptor is not None:
            os.close(self.mark_descriptor)
            self.mark_descriptor = None


class _Pending:
    __slots__ = ("staged", "metadata", "encoded", "done", "error", "message")

    def __init__(self, staged: StagedMessage, metadata: dict[str, Any], boot: str | None) -> None:
        self.staged = staged
        self.metadata = metadata
        self.encoded = encode_commit_mark(metadata, boot)
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.message: SpooledMessage | None = None


class GroupCommitter:
    """Commits :class:`StagedMessage` objects in batches."""

    def __init__(self, spool: Spool, use_syncfs: bool = True, lanes: int = 1) -> None:
        self.spool = spool
        self.syncfs = SYNCFS if use_syncfs else None
        # A mark trusted without its own sync must say which boot wrote it.
        self._boot = current_boot_id() if self.syncfs is not None else None
        if self._boot is None:
            self.syncfs = None
        self._waiting: list[_Pending] = []
        # Two batches may sync at once: one forms and starts while the
        # other waits for the disk, which shortens the wait of a session
        # that just missed a batch.
        self._lanes = anyio.Semaphore(max(1, lanes))
        self.batches = 0
        self._ready: list[StagedMessage] = []

    def stage(self, metadata: dict[str, Any]) -> StagedMessage:
        """Create a message's files (blocking system calls)."""
        return StagedMessage(self.spool, metadata)

    async def take(self, metadata: dict[str, Any]) -> StagedMessage:
        """A staged message for ``metadata``, from a pool created ahead,
        ``POOL_SIZE`` at a time. Raises :class:`SpoolFull` (an ``ENOSPC`` OSError)
        while the spool's filesystem is below its reserve."""
        connection_id = metadata.get("connection_id")
        reason = self.spool.space.reason()
        if reason is not None:
            await self._refused(connection_id, reason)
            raise SpoolFull(reason)
        try:
            staged = self._take_staged()
        except OSError as error:
            await self._failed(connection_id, error)
            raise
        staged.writer.metadata = dict(metadata)
        return staged

    def take_ready(self, metadata: dict[str, Any]) -> StagedMessage | None:
        """:meth:`take` without waiting, for the usual case: a staged message
        (the pool refilled here when empty) while the spool has room; None
        means "call take" (which refuses, or fails, and reports why)."""
        if self.spool.space.reason() is not None:
            return None
        try:
            staged = self._take_staged()
        except OSError:
            return None
        staged.writer.metadata = dict(metadata)
        return staged

    def _take_staged(self) -> StagedMessage:
        if not self._ready:
            # In the event loop, not a worker thread. Measured with
            # bench_smtp, sessions reused, one SMTP process, two A/B pairs:
            # 852 and 915 msg/s (1.45 and 1.34 ms of CPU a message) with the
            # thread, 970 and 1,008 msg/s (1.27 and 1.19 ms) here. The
            # thread's dozen system calls per staged message each gave up the
            # GIL and waited to get it back from the busy event loop (16 futex
            # calls a message in strace), and the session that had emptied
            # the pool waited for all of it. The loop pauses instead, about
            # 1 ms per 32 messages.
            self._ready.extend(self._create_pool())
        return self._ready.pop()

    def _create_pool(self) -> list[StagedMessage]:
        created: list[StagedMessage] = []
        try:
            for _ in range(POOL_SIZE):
                created.append(StagedMessage(self.spool, {}))
        except OSError:
            if not created:
                raise
        created.reverse()  # pop() hands out the oldest spool id first
        return created

    def close(self) -> None:
        """Remove the pooled files that no message used."""
        while self._ready:
            self._ready.pop().abort()

    async def commit(self, staged: StagedMessage, **extra_metadata: Any) -> SpooledMessage:
        """Like ``SpoolWriter.commit(**extra)``: returns once the message is durable."""
        pending = _Pending(staged, staged.writer.final_metadata(**extra_metadata), self._boot)
        self._waiting.append(pending)
        try:
            async with self._lanes:
                if not pending.done.is_set() and pending in self._waiting:
                    batch, self._waiting = self._waiting, []
                    await self._run(batch)
            await pending.done.wait()
        except BaseException:
            # The caller was cancelled (its collector's task group stopped, its
            # SMTP client went away) and will abort the staged files. An entry
            # left waiting would be committed later with those files closed
            # and fail the whole batch of whoever committed next: every other
            # session and collector of the process.
            if pending in self._waiting:
                self._forget(pending)
            elif not pending.done.is_set():
                # Another session is making it durable right now (shielded,
                # so briefly): its files must not be aborted under that batch.
                with anyio.CancelScope(shield=True):
                    await pending.done.wait()
            raise
        connection_id = pending.metadata.get("connection_id")
        if pending.error is not None:
            await self._failed(connection_id, pending.error)
            raise pending.error
        assert pending.message is not None
        if self.spool.space.accepted_for(connection_id):
            await anyio.to_thread.run_sync(self.spool.space.write_status, connection_id, None)
        return pending.message

    async def commit_batch(self, items: Sequence[BatchItem]) -> list[SpooledMessage]:
        """A batch already in memory, made durable with one sync
        (mailpipe.spool.batch_commit); returns once every message is durable,
        and announces them. Raises :class:`SpoolFull` below the reserve, as
        :meth:`take` does."""
        if not items:
            return []
        connection_id = items[0][1].get("connection_id")
        reason = self.spool.space.reason()
        if reason is not None:
            await self._refused(connection_id, reason)
            raise SpoolFull(reason)
        try:
            # Shielded: a cancelled caller must not leave the batch's files half made.
            with anyio.CancelScope(shield=True):
                messages = await self._write_batch(items)
        except OSError as error:
            await self._failed(connection_id, error)
            raise
        self.batches += 1
        for message in messages:
            self.spool.announce(message)
        if self.spool.space.accepted_for(connection_id):
            await anyio.to_thread.run_sync(self.spool.space.write_status, connection_id, None)
        return messages

    async def _write_batch(self, items: Sequence[BatchItem]) -> list[SpooledMessage]:
        # The files are written here, in the event loop, a slice at a time;
        # only the sync goes to a worker thread. Measured on the IMAP
        # benchmark: the whole batch in a worker thread was slower (its
        # dozen system calls per message each waited for the GIL while the
        # event loop parsed the next FETCH).
        written: list[str] = []
        fsync = self.syncfs is None
        messages: list[SpooledMessage] = []
        try:
            for start in range(0, len(items), BATCH_SLICE):
                messages += write_files(self.spool, items[start : start + BATCH_SLICE], self._boot, fsync, written)
                await anyio.sleep(0)  # let the connection's reader run between slices
            await anyio.to_thread.run_sync(make_durable, self.spool, self.syncfs)
        except BaseException:
            remove_files(written)
            raise
        return messages

    # --- disk full: the log line and the connections' status ------------------

    async def _failed(self, connection_id: str | None, error: BaseException) -> None:
        if storage_full(error):
            space = self.spool.space
            space.note_failure(error)
            await self._refused(connection_id, space.reason() or f"disk full: {error}")

    async def _refused(self, connection_id: str | None, reason: str) -> None:
        if self.spool.space.refused_for(connection_id, reason):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.spool.space.write_status, connection_id, reason)

    def _forget(self, pending: _Pending) -> None:
        self._waiting.remove(pending)
        pending.error = RuntimeError("the commit was cancelled")
        pending.done.set()

    async def _run(self, batch: list[_Pending]) -> None:
        # Defence in depth: an entry whose writer was aborted (it holds closed
        # files) is dropped, never allowed to fail the others.
        aborted = [p for p in batch if p.staged.writer.done]
        if aborted:
            batch = [p for p in batch if not p.staged.writer.done]
            for pending in aborted:
                pending.error = RuntimeError("the message was aborted before it was committed")
                pending.done.set()
            if not batch:
                return
        try:
            # The batch is durable or failed as a whole; a cancelled caller
            # must not leave the others waiting forever.
            with anyio.CancelScope(shield=True):
                messages = await self._make_durable(batch)
        except BaseException as error:
            for pending in batch:
                pending.error = error
                pending.done.set()
            if not isinstance(error, Exception):
                raise
            return
        self.batches += 1
        for pending, message in zip(batch, messages):
            pending.staged.writer.done = True
            pending.message = message
            pending.done.set()
            self.spool.announce(message)

    async def _make_durable(self, batch: list[_Pending]) -> list[SpooledMessage]:
        queue = f"{self.spool.root_text}/{QUEUE}"
        try:
            if self.syncfs is not None:
                # Closing, renaming and writing already-open files are quick
                # calls; done here, in the event loop, they avoid one GIL
                # hand-off to a worker thread per call, which costs more.
                for pending in batch:
                    self._finish_files(pending, fsync=False)
                    os.rename(pending.staged.mark_path, f"{queue}/{pending.staged.id}.json")
                await anyio.to_thread.run_sync(sync_filesystem_of, self.spool.root, self.syncfs)
            else:
                await anyio.to_thread.run_sync(self._finish_all_with_fsync, batch)
                for pending in batch:
                    os.rename(pending.staged.mark_path, f"{queue}/{pending.staged.id}.json")
                await anyio.to_thread.run_sync(fsync_directory, queue)
        except BaseException:
            # Nobody in the batch is acknowledged: take its files back out of
            # the queue. The pipeline may already have seen some of them (it
            # then stores a message the sender will send again: a duplicate,
            # never a loss).
            for pending in batch:
                for path in (f"{queue}/{pending.staged.id}.json", f"{queue}/{pending.staged.id}.eml",
                             pending.staged.mark_path):
                    unlink_if_present(path)
            raise
        return [SpooledMessage(p.staged.id, Path(f"{queue}/{p.staged.id}.eml"), p.metadata) for p in batch]

    def _finish_files(self, pending: _Pending, fsync: bool) -> None:
        """Message file closed and moved into queue/, metadata written beside
        it under its temporary name (not yet the commit mark)."""
        staged = pending.staged
        writer = staged.writer
        writer.close_file(fsync)
        os.rename(writer._tmp_path, f"{self.spool.root_text}/{QUEUE}/{writer.id}.eml")
        descriptor = staged.mark_descriptor
        assert descriptor is not None
        write_descriptor(descriptor, pending.encoded, staged.mark_reused, fsync)
        staged._close_mark()

    def _finish_all_with_fsync(self, batch: list[_Pending]) -> None:
        for pending in batch:
            self._finish_files(pending, fsync=True)
