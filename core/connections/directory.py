"""The running server's view of the connections, and the one loop that keeps it current.

Connection changes made by the CLI or the HTTP API (another process, or
another node) reach every serving process through the store's revision
counter: :func:`watch_connections` waits for it to move (``next_revision``:
SQLite polls it every 0.2 s, PostgreSQL wakes the loop by LISTEN/NOTIFY) and
refreshes the directory. The master process and every SMTP worker process
run the same loop.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

import anyio
import anyio.to_thread

from mailpipe.connections.store import StateStoreError
from mailpipe.types import Connection

if TYPE_CHECKING:
    from mailpipe.connections.service import ConnectionService
    from mailpipe.connections.store import ConnectionStore

log = logging.getLogger("mailpipe.server")

#: The longest one wait for a change lasts (a bound, not a poll interval:
#: the store's wait_for_change returns as soon as the revision moves).
WATCH_WAIT_SECONDS = 1.0


class ConnectionDirectory:
    """The server's current view of the connections, refreshed on every change."""

    def __init__(self) -> None:
        self.by_id: dict[str, Connection] = {}
        self.by_address: dict[str, Connection] = {}
        self.revision = -1
        self.changed = anyio.Event()

    def replace(self, connections: list[Connection], revision: int) -> None:
        self.by_id = {c.id: c for c in connections}
        self.by_address = {c.address.lower(): c for c in connections if c.address}
        self.revision = revision
        self.changed.set()
        self.changed = anyio.Event()

    def for_address(self, address: str) -> Connection | None:
        return self.by_address.get(address.lower())


def read_connections(store: "ConnectionStore", service: "ConnectionService") -> tuple[list[Connection], int]:
    """Every connection and the revision they were read at (revision first: a
    change made while reading is seen again on the next wait)."""
    revision = store.revision()
    return service.list(), revision


@contextlib.contextmanager
def store_outage_logged() -> Iterator[None]:
    """A read the store could not answer is logged, not fatal: the next change retries it."""
    try:
        yield
    except StateStoreError as error:
        log.warning("state store unavailable; serving the connections as last read", extra={"error": str(error)})


async def next_revision(store: Any, seen: int) -> int:
    """The store's revision once it moved past ``seen`` (or after WATCH_WAIT_SECONDS).
    The waiting thread is abandoned on cancellation: shutdown does not wait for it.

    A state store that is down (PostgreSQL restarting) does not stop the
    node: it keeps serving the connections as last read, and says so."""
    with store_outage_logged():
        return int(await anyio.to_thread.run_sync(
            store.wait_for_change, seen, WATCH_WAIT_SECONDS, abandon_on_cancel=True
        ))
    await anyio.sleep(WATCH_WAIT_SECONDS)
    return seen


async def watch_connections(
    store: "ConnectionStore",
    service: "ConnectionService",
    directory: ConnectionDirectory,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Until cancelled: when the store's revision moves, refresh ``directory``
    (or call ``refresh``, which must do it) so that the change takes effect."""
    while True:
        revision = await next_revision(store, directory.revision)
        if revision == directory.revision:
            continue
        with store_outage_logged():
            if refresh is not None:
                await refresh()
            else:
                directory.replace(*await anyio.to_thread.run_sync(read_connections, store, service))
