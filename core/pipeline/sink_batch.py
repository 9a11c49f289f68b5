"""``store_each``: a batch stored one message at a time.

The pipeline uses it for sinks that are not a ``BatchSink``, and a
``BatchSink`` may fall back to it (the filesystem sink does when it cannot
sync the filesystem in one call). It lives below both so that neither
imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from mailpipe.types import Failure, Sink

if TYPE_CHECKING:
    from mailpipe.spool.queue import SpooledMessage


async def store_each(sink: Sink, messages: list["SpooledMessage"]) -> dict[str, Failure]:
    """One ``store`` call per message, all at once (a sink bounds its own
    concurrency, as the S3 sink does with ``max_concurrency``); returns
    ``{spool id: exception}``."""
    failed: dict[str, Failure] = {}

    async def store(message: "SpooledMessage") -> None:
        try:
            await sink.store(message)
        except Exception as error:
            failed[message.id] = error

    async with anyio.create_task_group() as group:
        for message in messages:
            group.start_soon(store, message)
    return failed
