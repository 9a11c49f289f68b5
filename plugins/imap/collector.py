"""Collecting one mailbox: incremental, batched, crash-safe, reconnecting.

For every message, in this order (the durability rule):

1. ``UID FETCH BODY.PEEK[]`` — in batches of up to ``BATCH_MESSAGES``;
2. spooled — ``context.spool_bytes`` returns once the message is fsynced;
3. checkpoint — (UIDVALIDITY, last UID) written to the state store;
4. ``after_archive`` at the server — flag ``\\Seen``, move, or delete —
   in batches of up to ``ACTION_BATCH`` UIDs.

What a crash leaves behind, and how the next start repairs it:

- between 1 and 2: nothing was acknowledged; the message is fetched again.
- between 2 and 3: the message is spooled but the checkpoint does not say
  so; it is fetched and spooled again. The sink is content-addressed, so it
  is still stored once, and the arrival carries the same mailbox,
  UIDVALIDITY and UID, so it is recorded as the same arrival.
- between 3 and 4: spooled and checkpointed, still on the server. When a
  session starts, every UID at or below the checkpoint that is still in the
  mailbox (or still unseen, for ``seen``) gets its action without being
  fetched again. Nothing is ever deleted before it is spooled.

UIDVALIDITY changes when the server renumbers the mailbox: the checkpoint
is then meaningless, and everything in the mailbox is collected again
(content addressing keeps the archive from growing twice).

Fetching and spooling overlap: while one batch is being written and synced
into the spool, the next one is on the wire. A fetched batch of small
messages is spooled with one call (``CollectContext.spool_many``: a few
system calls per message and one filesystem sync for the batch, see
mailpipe.spool.batch_commit), not a task per message.

Failures arrive from inside task groups, wrapped in ``ExceptionGroup``:
:func:`interruption` unwraps them, so a lost connection takes the reconnect
path and the log names it. A full spool disk pauses the collection (nothing
is flagged, moved or deleted at the server for a message not spooled) and it
is tried again every ``STORAGE_RETRY_SECONDS``.

With several nodes, the context is fenced by the connection's lease
(mailpipe.connections.leases): the checkpoint write is refused and ``check_lease()``,
asked before each pass over new mail, each fetched batch and each
``after_archive`` batch, raises ``LeaseLost`` once another node collects the mailbox, so a
node that wakes up after a pause neither acts on the mailbox nor moves the
checkpoint back. ``LeaseLost`` is not an interruption: it ends the run.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from mailpipe.plugins.imap.client import (
    LARGE_MESSAGE_BYTES,
    IdleRefused,
    ImapError,
    ImapSession,
    MailboxStatus,
)
from mailpipe.plugins.imap.probe import asyncio_required
from mailpipe.plugins.imap.settings import ImapSettings
from mailpipe.spool.disk_space import storage_full
from mailpipe.errors import leaf_errors
from mailpipe.connections.live_status import LIVE
from mailpipe.types import CollectContext, Connection

log = logging.getLogger("mailpipe.imap")

BATCH_MESSAGES = 500  # messages per UID FETCH (at most BATCH_BYTES)
BATCH_BYTES = 16 * 1024 * 1024
#: UIDs whose sizes are asked for in one command (a multiple of BATCH_MESSAGES).
SIZES_AHEAD = 25 * BATCH_MESSAGES
ACTION_BATCH = 500
#: Messages being committed into the spool at once: a whole fetched batch,
#: so that the group committer makes it durable with one or two syncs.
SPOOL_CONCURRENCY = 256
IDLE_SECONDS = 120.0  # re-issue IDLE this often; also bounds how long a silent dead peer goes unnoticed
RECONNECT_SECONDS = (1.0, 60.0)
#: A full spool disk is retried this often (it is freed by the pipeline as it archives).
STORAGE_RETRY_SECONDS = 10.0
CHECKPOINT_KEY = "checkpoint"


@dataclass
class FetchedMessage:
    """One message on its way to the spool: whole (``data``) or, when large,
    as ranges fetched on demand (``chunks()``)."""

    uid: int
    source: dict[str, Any]
    data: bytes | bytearray | None = None
    chunks: Callable[[], AsyncIterator[bytes | bytearray]] | None = None


#: What the connection type does with a fetched message: spool it (``imap``)
#: or unwrap it first (``imap_failover``). Returns once it is durable.
Deliver = Callable[[FetchedMessage], Awaitable[None]]
#: The same for a whole fetched batch of small messages (all with ``data``):
#: returns once every one of them is durable.
DeliverBatch = Callable[[list[FetchedMessage]], Awaitable[None]]


@dataclass
class Checkpoint:
    source: str
    uidvalidity: int
    last_uid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "uidvalidity": self.uidvalidity, "last_uid": self.last_uid}


@dataclass
class _Batch:
    messages: list[FetchedMessage]
    highest_uid: int


@dataclass
class _Large:
    message: FetchedMessage
    done: anyio.Event = field(default_factory=anyio.Event)


async def spool_as_is(context: CollectContext, message: FetchedMessage) -> None:
    """The ``imap`` delivery: the message, byte for byte, with where it came from."""
    metadata = {"imap": message.source}
    if message.data is not None:
        await context.spool_bytes(message.data, metadata)
    else:
        assert message.chunks is not None
        await context.spool_chunks(message.chunks(), metadata)


def batch_spooler(context: CollectContext) -> DeliverBatch | None:
    """The ``imap`` delivery of a fetched batch: one call to the host's
    ``spool_many`` (one worker-thread call and one sync for the batch), where
    the host offers it."""
    spool_many = context.spool_many
    if spool_many is None:
        return None

    async def deliver_batch(messages: list[FetchedMessage]) -> None:
        await spool_many([(m.data, {"imap": m.source}) for m in messages if m.data is not None])

    return deliver_batch


class Collector:
    def __init__(
        self,
        connection: Connection,
        context: CollectContext,
        deliver: Deliver,
        settings: ImapSettings | None = None,
        deliver_batch: DeliverBatch | None = None,
    ) -> None:
        self.connection = connection
        self.context = context
        self.deliver = deliver
        self.deliver_batch = deliver_batch
        self.settings = settings or ImapSettings.from_connection(connection)
        self.extra = {"connection": connection.id, "server": self.settings.server, "mailbox": self.settings.mailbox}
        self._delay = RECONNECT_SECONDS[0]
        self._spool_slots = anyio.Semaphore(SPOOL_CONCURRENCY)
        self._signed_in = False  # this session got past LOGIN and SELECT
        self._pass_uids: list[int] = []  # what this pass found, for the messages-left figure

    # --- the outer loop: sessions, reconnects ----------------------------------

    async def run(self) -> None:
        """Collect until cancelled; reconnect with backoff after any failure."""
        problem = asyncio_required()
        if problem:
            raise RuntimeError(problem)
        while True:
            self._signed_in = False
            try:
                await self._session()
            except Exception as error:
                cause = interruption(error)
                if cause is None:
                    raise
                if storage_full(cause):
                    log.warning(
                        "IMAP collection paused: the spool's disk is full; nothing is acted on at the server",
                        extra={**self.extra, "error": str(cause), "retry_in_seconds": STORAGE_RETRY_SECONDS},
                    )
                    await anyio.sleep(STORAGE_RETRY_SECONDS)
                    continue
                if not self._signed_in:
                    # Cannot connect, log in or open the mailbox: red at once. A session
                    # lost later is not (the reconnect, a second from now, tells).
                    LIVE.failed(self.connection.id, "collector", str(cause))
                log.warning(
                    "IMAP collection interrupted; reconnecting",
                    extra={**self.extra, "error": str(cause), "retry_in_seconds": self._delay},
                )
            await anyio.sleep(self._delay)
            self._delay = min(self._delay * 2, RECONNECT_SECONDS[1])

    async def _session(self) -> None:
        session = await ImapSession.open(self.settings)
        try:
            await session.login()
            status = await session.select()
            self._delay = RECONNECT_SECONDS[0]
            self._signed_in = True
            LIVE.ok(self.connection.id, "collector")  # logged in, mailbox there: mail flows
            log.info(
                "IMAP session open",
                extra={**self.extra, "uidvalidity": status.uidvalidity, "messages": status.exists,
                       "idle": session.has("IDLE")},
            )
            checkpoint = await self._checkpoint_for(status)
            await self._finish_interrupted_actions(session, checkpoint)
            idle = session.has("IDLE")
            while True:
                await self.collect_new(session, checkpoint)
                if idle:
                    try:
                        await session.wait_for_change(IDLE_SECONDS)
                        continue
                    except IdleRefused as error:
                        idle = False
                        log.warning(
                            "IDLE refused; polling instead",
                            extra={**self.extra, "error": str(error), "poll_interval": self.settings.poll_interval},
                        )
                await anyio.sleep(self.settings.poll_interval)
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(2):
                    await session.aclose()
                session.abort()

    # --- checkpoint -------------------------------------------------------------------

    async def _checkpoint_for(self, status: MailboxStatus) -> Checkpoint:
        saved = await self.context.get_state(CHECKPOINT_KEY) or {}
        source = self.settings.source_key
        if saved.get("source") == source and saved.get("uidvalidity") == status.uidvalidity:
            return Checkpoint(source, status.uidvalidity, int(saved.get("last_uid", 0)))
        if saved.get("source") == source:
            log.warning(
                "UIDVALIDITY changed: the server renumbered the mailbox; collecting every message in it "
                "again (the archive stores each content once)",
                extra={**self.extra, "old_uidvalidity": saved.get("uidvalidity"), "new_uidvalidity": status.uidvalidity},
            )
        checkpoint = Checkpoint(source, status.uidvalidity, 0)
        await self.context.set_state(CHECKPOINT_KEY, checkpoint.to_json())
        return checkpoint

    async def _finish_interrupted_actions(self, session: ImapSession, checkpoint: Checkpoint) -> None:
        """Spooled and checkpointed before a crash, still waiting for their action."""
        if checkpoint.last_uid == 0:
            return
        criteria = "UNSEEN" if self.settings.after_archive == "seen" else ""
        waiting = await session.search_uids(1, checkpoint.last_uid, criteria)
        if waiting:
            log.info(
                "finishing after_archive for messages spooled before a restart",
                extra={**self.extra, "count": len(waiting), "action": self.settings.after_archive},
            )
            await self._act(session, waiting)

    # --- one pass over new mail ---------------------------------------------------------

    async def collect_new(self, session: ImapSession, checkpoint: Checkpoint) -> int:
        """Fetch, spool, checkpoint and act on every message above the checkpoint."""
        await self.context.check_lease()
        uids = await session.search_uids(checkpoint.last_uid + 1)
        self._pass_uids = uids
        self.context.report_progress(remaining=len(uids))
        if not uids:
            return 0
        acknowledged: list[int] = []
        collected = 0
        send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=1)
        async with anyio.create_task_group() as group:
            group.start_soon(self._spool_worker, receive, checkpoint, acknowledged)
            async with send:
                sizes: dict[int, int] = {}
                for start in range(0, len(uids), BATCH_MESSAGES):
                    chunk = uids[start : start + BATCH_MESSAGES]
                    if start % SIZES_AHEAD == 0:
                        # Sizes for many batches at once: one round trip instead of one per batch.
                        sizes = await session.fetch_sizes(uids[start : start + SIZES_AHEAD])
                    for work in self._plan(chunk, sizes, checkpoint):
                        await self.context.check_lease()  # a node woken from a pause fetches no more
                        if isinstance(work, _Large):
                            work.message.chunks = _streamer(session, work.message.uid)
                            await send.send(work)
                            await work.done.wait()  # the worker uses the session meanwhile
                            collected += 1
                            continue
                        bodies = await session.fetch_bodies([m.uid for m in work.messages])
                        work.messages = [m for m in work.messages if m.uid in bodies]
                        for message in work.messages:
                            message.data = bodies[message.uid]
                        del bodies
                        collected += len(work.messages)
                        await send.send(work)
                        await self._act_when_due(session, acknowledged, ACTION_BATCH)
        await self._act_when_due(session, acknowledged, 1)
        self.context.report_progress(remaining=0)  # every message found is spooled (or was expunged meanwhile)
        log.info("collected messages", extra={**self.extra, "count": collected, "last_uid": checkpoint.last_uid})
        return collected

    def _plan(self, chunk: list[int], sizes: dict[int, int], checkpoint: Checkpoint) -> Iterator[_Batch | _Large]:
        """Runs of small messages as batches, each large message on its own —
        in UID order, so the checkpoint never passes a message not yet spooled."""
        source = {"server": self.settings.server, "mailbox": self.settings.mailbox, "uidvalidity": checkpoint.uidvalidity}
        batch: list[FetchedMessage] = []
        batch_bytes = 0
        for uid in chunk:
            size = sizes.get(uid)
            if size is None:  # expunged by someone else since the search
                continue
            message = FetchedMessage(uid=uid, source={**source, "uid": uid})
            if size > LARGE_MESSAGE_BYTES:
                if batch:
                    yield _Batch(batch, batch[-1].uid)
                    batch, batch_bytes = [], 0
                yield _Large(message)
                continue
            if batch and batch_bytes + size > BATCH_BYTES:
                yield _Batch(batch, batch[-1].uid)
                batch, batch_bytes = [], 0
            batch.append(message)
            batch_bytes += size
        if batch:
            yield _Batch(batch, batch[-1].uid)

    async def _spool_worker(
        self, receive: MemoryObjectReceiveStream[Any], checkpoint: Checkpoint, acknowledged: list[int]
    ) -> None:
        async with receive:
            async for work in receive:
                if isinstance(work, _Large):
                    try:
                        await self.deliver(work.message)
                    finally:
                        work.done.set()
                    uids, highest = [work.message.uid], work.message.uid
                else:
                    if self.deliver_batch is not None:
                        await self.deliver_batch(work.messages)
                    else:
                        async with anyio.create_task_group() as group:
                            for message in work.messages:
                                group.start_soon(self._deliver_limited, message)
                    uids, highest = [m.uid for m in work.messages], work.highest_uid
                    work.messages.clear()  # let the bodies go
                checkpoint.last_uid = max(checkpoint.last_uid, highest)
                await self.context.set_state(CHECKPOINT_KEY, checkpoint.to_json())
                left = len(self._pass_uids) - bisect_right(self._pass_uids, checkpoint.last_uid)
                self.context.report_progress(remaining=left, collected=len(uids))
                acknowledged.extend(uids)

    async def _deliver_limited(self, message: FetchedMessage) -> None:
        async with self._spool_slots:
            await self.deliver(message)

    # --- after_archive ---------------------------------------------------------------

    async def _act_when_due(self, session: ImapSession, acknowledged: list[int], minimum: int) -> None:
        if len(acknowledged) < minimum:
            return
        uids = list(acknowledged)
        acknowledged.clear()
        await self._act(session, uids)

    async def _act(self, session: ImapSession, uids: list[int]) -> None:
        for part in _batched(sorted(uids), ACTION_BATCH):
            await self.context.check_lease()  # fencing: only the lease's holder changes the mailbox
            if self.settings.after_archive == "delete":
                await session.delete(part)
            elif self.settings.after_archive == "move":
                assert self.settings.move_to
                await session.move(part, self.settings.move_to)
            else:
                await session.add_flags(part, "\\Seen")


def interruption(error: BaseException) -> BaseException | None:
    """The failure a collection recovers from by itself (the IMAP server went
    away or misbehaved, the spool's disk is full), found inside the
    ``ExceptionGroup`` of the task groups it came through; None when ``error``
    holds anything else (a bug, which must not be retried silently)."""
    leaves = leaf_errors(error)
    if leaves and all(isinstance(leaf, ImapError) or storage_full(leaf) for leaf in leaves):
        return leaves[0]
    return None


def _streamer(session: ImapSession, uid: int) -> Callable[[], AsyncIterator[bytes | bytearray]]:
    return lambda: session.stream(uid)


def _batched(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
