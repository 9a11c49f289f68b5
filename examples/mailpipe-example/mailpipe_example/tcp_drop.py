"""``tcp_drop``: a push protocol of its own, to show that mailpipe is not
limited to SMTP and pull.

The protocol is deliberately tiny: a client connects to the connection's
``listen`` address, sends one message and shuts down its sending side; the
server answers ``OK <spool id>`` once the message is durable (only then may
the client forget it), or ``NO <reason>``. A vendor's webhook or streaming
API fits the same shape: ``serve`` owns the listeners, and spools through
the context of the connection a delivery belongs to.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from mailpipe.types import CollectContext, Connection, IntakeContext, ValidationContext

#: A larger delivery is refused: this is an example, not a bulk transport.
MAX_MESSAGE_BYTES = 25 * 1024 * 1024
RECONCILE_SECONDS = 0.5


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    try:
        host, port = split_listen(str(settings["listen"]))
    except ValueError:
        return [f"listen {settings['listen']!r} is not HOST:PORT, e.g. 127.0.0.1:2600"]
    if not host or not 0 < port < 65536:
        return [f"listen {settings['listen']!r} needs a host and a port from 1 to 65535"]
    return []


async def serve(context: IntakeContext) -> None:
    """Keep one listener per enabled connection, following enable, disable,
    edit and delete (``context.connections()`` is always current)."""
    running: dict[str, tuple[str, anyio.CancelScope]] = {}
    async with anyio.create_task_group() as group:
        while True:
            wanted = {c.id: c for c in context.connections() if c.enabled}
            for connection_id, (listen, scope) in list(running.items()):
                current = wanted.get(connection_id)
                if current is None or current.settings["listen"] != listen:
                    scope.cancel()
                    del running[connection_id]
            for connection_id, connection in wanted.items():
                if connection_id not in running:
                    scope = anyio.CancelScope()
                    running[connection_id] = (connection.settings["listen"], scope)
                    group.start_soon(_listen, connection, context.collect_context(connection), scope)
            await anyio.sleep(RECONCILE_SECONDS)


async def _listen(connection: Connection, context: CollectContext, scope: anyio.CancelScope) -> None:
    with scope:
        host, port = split_listen(connection.settings["listen"])
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as error:
            context.log.error(f"cannot listen on {host}:{port}: {error}; edit the connection's listen")
            return
        context.log.info("tcp_drop listening", extra={"listen": f"{host}:{port}"})
        async with listener:
            await listener.serve(partial(_receive, context))


async def _receive(context: CollectContext, stream: SocketStream) -> None:
    async with stream:
        data = bytearray()
        async for chunk in stream:  # ends when the client shuts down its sending side
            data += chunk
            if len(data) > MAX_MESSAGE_BYTES:
                await stream.send(f"NO larger than {MAX_MESSAGE_BYTES} bytes\n".encode())
                return
        peer = stream.extra(SocketAttribute.remote_address)
        # Returns once the message is fsynced: only then is "OK" a promise.
        spool_id = await context.spool_bytes(bytes(data), {"source": {"peer": str(peer[0])}})
        await stream.send(f"OK {spool_id}\n".encode())
