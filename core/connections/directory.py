"""The running server's view of the connections, and the one loop that keeps it current.

Connection changes made by the CLI or the HTTP API (another process, or
another node) reach every serving process through the store's revision
counter: :func:`watch_connections` polls it every ``WATCH_INTERVAL`` seconds
and refreshes the directory when it moved. The master process and every SMTP
worker process run the same loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import anyio
import anyio.to_thread

from mailpipe.types import Connection

if TYPE_CHECKING:
    from mailpipe.connections.service import ConnectionService
    from mailpipe.connections.store import ConnectionStore

WATCH_INTERVAL = 0.2


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
    change made while reading is seen again on the next poll)."""
    revision = store.revision()
    return service.list(), revision


async def watch_connections(
    store: "ConnectionStore",
    service: "ConnectionService",
    directory: ConnectionDirectory,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Until cancelled: when the store's revision moves, refresh ``directory``
    (or call ``refresh``, which must do it) so that the change takes effect."""
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        revision = await anyio.to_thread.run_sync(store.revision)
        if revision == directory.revision:
            continue
        if refresh is not None:
            await refresh()
        else:
            directory.replace(*await anyio.to_thread.run_sync(read_connections, store, service))
