"""Running the pipeline: in a process of its own, or in the server process.

By default (``[pipeline] own_process = true``) ``mailpipe serve`` runs the
pipeline in this module's process, so that archiving never holds the GIL
that intake needs: the server process keeps the SMTP listener (or, with
``--workers N``, supervises N SMTP worker processes) and the IMAP
collectors. Every process that spools announces the new spool ids to the
pipeline process (mailpipe.spool.notify); its rescan of the queue every
second is the backstop. With ``own_process = false`` the pipeline runs in
the server's event loop (one process; slower, simpler to debug).

The pipeline process runs at ``[pipeline] cpu_priority``:

- ``idle``: Linux SCHED_IDLE. It runs on CPU time that intake leaves free.
  During a burst, SMTP sessions are answered (and their messages fsynced
  into the spool) at full speed and archiving catches up right after; the
  spool is durable, so a message waiting there is safe. Under load that
  never stops, the spool grows on disk until intake is refused
  (``452 4.3.1``) when the disk is full.
- ``normal``: the same priority as intake.
- ``auto`` (the default): ``idle`` when SMTP runs in worker processes
  (``serve --workers N``, N > 1: they can keep every core busy), else
  ``normal`` (one intake process leaves cores free, and an idle-priority
  pipeline that holds a spool directory's lock when it is preempted makes
  intake wait for it). Measured in docs/smtp.md and docs/imap.md.

Lowering a process's priority needs no privilege; raising it back does, so
the setting takes effect at start only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Callable

import anyio
from anyio.abc import TaskStatus

from mailpipe.server.children import run_child
from mailpipe.pipeline.enrich import default_enrichers
from mailpipe.connections.live_status import LIVE
from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.reload import on_reload
from mailpipe.pipeline.sink_reload import SinkReloader

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

log = logging.getLogger("mailpipe.pipeline")


async def run_pipeline(
    runtime: "Runtime",
    *,
    announcements: bool = False,
    recover_at_start: bool = True,
    task_status: TaskStatus[list[SinkSlot]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver until cancelled, then close the sinks. With ``announcements``,
    take the spool ids that other processes announce (mailpipe.spool.notify).
    ``recover_at_start=False`` leaves the spool's recovery to the server
    process, which does it before it starts any other: a pipeline process
    restarted while others spool must not clear their files."""
    sinks = runtime.build_sinks()
    pipeline = Pipeline(
        runtime.spool, sinks, runtime.config.pipeline, default_enrichers(), recover_at_start=recover_at_start
    )
    stop_reloading: Callable[[], None] = lambda: None
    try:
        async with anyio.create_task_group() as group:
            if announcements:
                from mailpipe.spool.notify import receive_announcements

                group.start_soon(receive_announcements, runtime.spool.root, pipeline.announced)
            await group.start(pipeline.run)
            # SIGHUP rebuilds a sink whose optional settings changed.
            stop_reloading = on_reload(SinkReloader(runtime, pipeline, group))
            task_status.started(sinks)
    finally:
        stop_reloading()
        with anyio.CancelScope(shield=True):
            for slot in sinks:
                await slot.sink.aclose()


def resolve_cpu_priority(setting: str, smtp_workers: int) -> str:
    """``idle`` or ``normal`` for ``[pipeline] cpu_priority`` (see above)."""
    if setting == "auto":
        return "idle" if smtp_workers > 1 else "normal"
    return setting


def lower_cpu_priority(priority: str) -> None:
    """Apply a resolved ``cpu_priority`` to this whole process (every thread)."""
    if priority != "idle":
        return
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:  # not Linux
        log.warning("cpu_priority = 'idle' needs Linux SCHED_IDLE; the pipeline runs at normal priority")
        return
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(thread), policy, os.sched_param(0))
        except OSError as error:
            log.warning(
                "cannot lower the pipeline's CPU priority; it runs at normal priority",
                extra={"error": str(error)},
            )
            return


async def _pipeline_main(runtime: "Runtime", ready: Callable[[], None]) -> None:
    priority = resolve_cpu_priority(runtime.config.pipeline.cpu_priority, int(runtime.extras.get("workers", 1)))
    lower_cpu_priority(priority)
    LIVE.attach(runtime.store)
    async with anyio.create_task_group() as group:
        sinks = await group.start(lambda task_status: run_pipeline(
            runtime, announcements=True, recover_at_start=False, task_status=task_status
        ))
        log.info(
            "pipeline process ready",
            extra={"sinks": [s.name for s in sinks], "cpu_priority": priority},
        )
        ready()


def main(argv: list[str] | None = None) -> int:
    return run_child("python -m mailpipe.server.pipeline_process", "pipeline", _pipeline_main, argv)


if __name__ == "__main__":
    sys.exit(main())
