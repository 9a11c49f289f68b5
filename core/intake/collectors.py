"""The collector context: what a pull connection's collector is given to work with.

A collector (``collect`` of a pull connection type) fetches mail and hands
each message to ``spool_bytes``/``spool_chunks`` (or a fetched batch to
``spool_many``), which return once the message is durable in the spool (through the group committer: a batch
spooled concurrently gets one filesystem sync). Its checkpoints live in the
state store under the connection's id (``get_state``/``set_state``). The
host stamps every message with the connection's arrival metadata and
provenance, so a collector cannot forget or forge them.

With a lease (several nodes, mailpipe.connections.leases) the context is
fenced: ``set_state`` writes only while the lease's token is current, and
``check_lease`` raises ``LeaseLost`` once another node took over.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from mailpipe.connections.directory import ConnectionDirectory
from mailpipe.connections.leases import Lease, LeaseKeeper
from mailpipe.connections.live_status import LIVE
from mailpipe.connections.metrics import METRICS
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.spool.queue import SpooledMessage
from mailpipe.types import CollectContext, Connection

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

# Logger names are the parts' stable names (operators filter on them), not module paths.
log = logging.getLogger("mailpipe.server")


def collect_context(
    runtime: "Runtime",
    connection: Connection,
    committer: GroupCommitter,
    directory: ConnectionDirectory,
    fence: tuple[LeaseKeeper, Lease] | None = None,
) -> CollectContext:
    """What ``connection``'s collector (or a push listener, per connection)
    uses to spool mail and keep its checkpoints in the state store; fenced
    with ``fence`` (the node's lease keeper and this connection's lease)."""
    store = runtime.store
    arrival = runtime.host.arrival(connection)

    def stamp(metadata: dict[str, Any]) -> dict[str, Any]:
        # A collector may file a message under another connection (the
        # failover type files unwrapped reports under the connection it
        # backs up), but the provenance is the host's, from the registration.
        return {**arrival, **metadata, "provenance": arrival["provenance"]}

    # Through the group committer: a collector that spools a fetched
    # batch concurrently gets one filesystem sync for the whole batch.
    async def spool_bytes(data: bytes, metadata: dict[str, Any]) -> str:
        return await spool_chunks([data], metadata)

    async def spool_chunks(chunks: Any, metadata: dict[str, Any]) -> str:
        staged = await committer.take(stamp(metadata))
        try:
            await staged.writer.write_all_async(chunks)
            message: SpooledMessage = await committer.commit(staged)
            METRICS.collected.labels(connection.id, connection.type).inc()
            LIVE.message_received(connection.id)
        except BaseException:
            staged.abort()
            raise
        return message.id

    async def spool_many(items: list[tuple[bytes, dict[str, Any]]]) -> list[str]:
        # A batch already in memory: one worker-thread call and one sync for
        # all of it (mailpipe.spool.batch_commit), no task per message.
        messages = await committer.commit_batch([(data, stamp(metadata)) for data, metadata in items])
        METRICS.collected.labels(connection.id, connection.type).inc(len(messages))
        LIVE.message_received(connection.id)
        return [message.id for message in messages]

    def state_key(key: str) -> str:
        return f"{connection.id}:{key}"

    async def get_state(key: str) -> Any:
        return await anyio.to_thread.run_sync(store.get_state, state_key(key))

    async def set_state(key: str, value: Any) -> None:
        if fence is None:
            await anyio.to_thread.run_sync(store.set_state, state_key(key), value)
        else:
            keeper, lease = fence
            await anyio.to_thread.run_sync(keeper.table.set_state_fenced, lease, state_key(key), value)

    fenced: dict[str, Any] = {}
    if fence is not None:
        keeper, lease = fence
        fenced = {"check_lease": lambda: keeper.check(lease), "fencing_token": lease.token}

    return CollectContext(
        spool_bytes=spool_bytes,
        spool_chunks=spool_chunks,
        spool_many=spool_many,
        get_state=get_state,
        set_state=set_state,
        find_connection=lambda cid: directory.by_id.get(cid),
        log=logging.LoggerAdapter(log, {"connection": connection.id}),
        report_progress=lambda *, remaining, collected=0: LIVE.progress(connection.id, remaining, collected),
        **fenced,
    )
