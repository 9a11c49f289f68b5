"""The durability order with batched spooling, on a real Dovecot over TLS.

The collector spools a fetched batch with one ``spool_many`` call
(mailpipe.spool.batch_commit). Watched from the context it is given, over
several FETCH batches and several after_archive batches:

- every message of a batch is still on the server when the batch is
  handed to the spool (nothing is deleted before it is spooled);
- the checkpoint never names a UID whose batch has not come back from
  ``spool_many`` (whose files are then in the queue with their marks);
- every message the server no longer has is at or below the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from tests.support.imap import make_message, multi_append
from tests.support.peers.dovecot import Dovecot

from mailpipe.plugins.imap.collector import (
    ACTION_BATCH,
    BATCH_MESSAGES,
    Collector,
    FetchedMessage,
    batch_spooler,
    spool_as_is,
)
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.spool.queue import Spool
from mailpipe.types import CollectContext, Connection

WAIT = 120.0  # bounds only: a broken build fails instead of hanging


def test_batches_are_spooled_then_checkpointed_then_deleted(
    tmp_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    count = BATCH_MESSAGES * 2 + 200  # three FETCH batches, three after_archive batches
    assert count > 2 * ACTION_BATCH
    multi_append(dovecot, user, [make_message(n) for n in range(count)])
    on_server_at_start = set(dovecot.uids(user))
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    state: dict[str, Any] = {}
    spooled_up_to = 0  # the highest UID whose batch came back from spool_many
    batches: list[list[int]] = []
    problems: list[str] = []

    async def spool_many(items: list[tuple[bytes, dict[str, Any]]]) -> list[str]:
        nonlocal spooled_up_to
        uids = [metadata["imap"]["uid"] for _data, metadata in items]
        batches.append(uids)
        on_server = set(await anyio.to_thread.run_sync(dovecot.uids, user))
        if missing := set(uids) - on_server:
            problems.append(f"deleted before they were spooled: {sorted(missing)[:5]}")
        gone = on_server_at_start - on_server
        checkpoint = state.get("checkpoint", {}).get("last_uid", 0)
        if gone and max(gone) > checkpoint:
            problems.append(f"deleted above the checkpoint {checkpoint}: {max(gone)}")
        messages = await committer.commit_batch([(data, {"connection_id": "c1", **m}) for data, m in items])
        if any(spool.load(message.id) is None for message in messages):
            problems.append("spool_many returned before every mark was in the queue")
        spooled_up_to = max(spooled_up_to, *uids)
        return [message.id for message in messages]

    async def refuse(*_args: Any) -> str:
        raise AssertionError("a batch of small messages must go through spool_many")

    async def get_state(key: str) -> Any:
        return state.get(key)

    async def set_state(key: str, value: Any) -> None:
        if value["last_uid"] > spooled_up_to:
            problems.append(f"checkpoint {value['last_uid']} passed the spooled UIDs ({spooled_up_to})")
        state[key] = value

    context = CollectContext(refuse, refuse, get_state, set_state, lambda _: None, None, spool_many=spool_many)
    settings = {"server": dovecot.host, "port": dovecot.imaps_port, "username": user, "password": password,
                "ca_file": str(dovecot.ca_file)}
    connection = Connection("c1", "imap", "order test", True, settings)

    async def deliver(message: FetchedMessage) -> None:
        await spool_as_is(context, message)

    async def scenario() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(Collector(connection, context, deliver, deliver_batch=batch_spooler(context)).run)
            with anyio.fail_after(WAIT):
                while await anyio.to_thread.run_sync(dovecot.uids, user):
                    await anyio.sleep(0.1)
            group.cancel_scope.cancel()

    anyio.run(scenario, backend="asyncio")
    assert problems == []
    assert len(batches) >= 3 and all(len(batch) <= BATCH_MESSAGES for batch in batches)
    assert sorted(uid for batch in batches for uid in batch) == sorted(on_server_at_start)
    assert state["checkpoint"]["last_uid"] == max(on_server_at_start)
    assert len(spool.pending()) == count
