"""``mailpipe serve --workers N``: N SMTP listener processes on the same ports.

One Python process serves SMTP on one core at most (the GIL). With
``--workers N`` (N > 1) the server process starts N workers instead of
listening itself. The server binds N sockets on every ``[smtp] listen``
address with SO_REUSEPORT (the kernel spreads new connections over them)
before any worker starts, and each worker inherits its own (see
mailpipe.intake.smtp.listener.bind_worker_sockets); each worker keeps its own
copy of the connection directory current by polling the store's revision
(as the server does), and spools what it accepts with its own group
committer.

Only the pipeline process (mailpipe.server.pipeline_process) delivers, so no
message is ever claimed twice: each worker announces what it spooled over a
Unix datagram socket (mailpipe.spool.notify), and the pipeline's periodic
rescan of the spool queue (every second) is the backstop. Starting,
restarting and stopping workers: mailpipe.server.children.

Run by hand only for debugging: ``python -m mailpipe.server.smtp_workers --config PATH``.
"""

from __future__ import annotations

import logging
import socket
import sys
from functools import partial
from typing import TYPE_CHECKING, Callable

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from mailpipe.server.children import child_command, run_child, supervise

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

log = logging.getLogger("mailpipe.smtp")


async def run_worker_pool(
    runtime: "Runtime", workers: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    from mailpipe.intake.smtp.listener import bind_worker_sockets

    command = child_command("mailpipe.server.smtp_workers", runtime)
    listening = bind_worker_sockets(runtime.config.smtp, workers)
    try:
        async with anyio.create_task_group() as group:
            # All at once: a worker is ready in about 1.5 s, and until then
            # the connections its socket is given wait in its queue.
            async with anyio.create_task_group() as starting:
                for number, sockets in enumerate(listening, start=1):
                    descriptors = [listening_socket.fileno() for listening_socket in sockets]
                    worker = [*command, "--worker-number", str(number),
                              "--listen-fds", ",".join(map(str, descriptors))]
                    starting.start_soon(partial(group.start, supervise, worker, f"SMTP worker {number}", descriptors))
            log.info("SMTP worker processes ready", extra={"workers": workers})
            task_status.started()
    finally:
        for sockets in listening:
            for listening_socket in sockets:
                listening_socket.close()


async def _worker_main(runtime: "Runtime", ready: Callable[[], None]) -> None:
    from mailpipe.connections.directory import ConnectionDirectory, read_connections, watch_connections
    from mailpipe.connections.live_status import LIVE
    from mailpipe.intake.smtp.listener import serve_smtp
    from mailpipe.spool.notify import SpoolAnnouncer

    LIVE.attach(runtime.store)
    directory = ConnectionDirectory()
    directory.replace(*await anyio.to_thread.run_sync(read_connections, runtime.store, runtime.service))
    announcer = SpoolAnnouncer(runtime.spool.root)
    runtime.spool.subscribe(lambda message: announcer.announce(message.id))
    async with anyio.create_task_group() as group:
        group.start_soon(watch_connections, runtime.store, runtime.service, directory)
        await group.start(
            lambda task_status: serve_smtp(
                runtime.config.smtp, directory, runtime.host, runtime.spool, reuse_port=True,
                sockets=inherited_sockets(runtime.extras.get("listen_fds") or []), task_status=task_status,
            )
        )
        ready()


def inherited_sockets(descriptors: list[int]) -> list[socket.socket] | None:
    """The listening sockets the server bound for this worker (None when
    started by hand without them: the worker then binds its own)."""
    return [socket.socket(fileno=descriptor) for descriptor in descriptors] or None


def main(argv: list[str] | None = None) -> int:
    return run_child("python -m mailpipe.server.smtp_workers", "smtp worker", _worker_main, argv)


if __name__ == "__main__":
    sys.exit(main())
