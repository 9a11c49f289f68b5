"""``mailpipe serve --workers N``: N SMTP listener processes on the same ports.

One Python process serves SMTP on one core at most (the GIL). With
``--workers N`` (N > 1) the server process starts N workers instead of
listening itself; each worker binds every ``[smtp] listen`` address with
SO_REUSEPORT (the kernel spreads new connections over them), keeps its own
copy of the connection directory current by polling the store's revision
(as the server does), and spools what it accepts with its own group
committer.

Only the pipeline process (mailpipe.pipeline_process) delivers, so no
message is ever claimed twice: each worker announces what it spooled over a
Unix datagram socket (mailpipe.spool_notify), and the pipeline's periodic
rescan of the spool queue (every second) is the backstop. Starting,
restarting and stopping workers: mailpipe.children.

Run by hand only for debugging: ``python -m mailpipe.smtp.worker --config PATH``.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Callable

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from mailpipe.children import child_command, run_child, supervise

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

log = logging.getLogger("mailpipe.smtp")


async def run_worker_pool(
    runtime: "Runtime", workers: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    command = child_command("mailpipe.smtp.worker", runtime)
    async with anyio.create_task_group() as group:
        for number in range(1, workers + 1):
            await group.start(supervise, [*command, "--worker-number", str(number)], f"SMTP worker {number}")
        log.info("SMTP worker processes ready", extra={"workers": workers})
        task_status.started()


async def _worker_main(runtime: "Runtime", ready: Callable[[], None]) -> None:
    from mailpipe.server import ConnectionDirectory, next_revision, store_outage_logged
    from mailpipe.smtp.listener import serve_smtp
    from mailpipe.spool_notify import SpoolAnnouncer

    from mailpipe.live_status import LIVE

    LIVE.attach(runtime.store)
    directory = ConnectionDirectory()

    def read() -> tuple[list, int]:
        revision = runtime.store.revision()
        return runtime.service.list(), revision

    async def watch() -> None:
        while True:
            revision = await next_revision(runtime.store, directory.revision)
            if revision != directory.revision:
                with store_outage_logged():
                    directory.replace(*await anyio.to_thread.run_sync(read))

    directory.replace(*await anyio.to_thread.run_sync(read))
    announcer = SpoolAnnouncer(runtime.spool.root)
    runtime.spool.subscribe(lambda message: announcer.announce(message.id))
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await group.start(
            lambda task_status: serve_smtp(
                runtime.config.smtp, directory, runtime.host, runtime.spool, reuse_port=True,
                task_status=task_status,
            )
        )
        ready()


def main(argv: list[str] | None = None) -> int:
    return run_child("python -m mailpipe.smtp.worker", "smtp worker", _worker_main, argv)


if __name__ == "__main__":
    sys.exit(main())
