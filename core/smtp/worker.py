"""``mailpipe serve --workers N``: N SMTP listener processes on the same ports.

One Python process serves SMTP on one core at most (the GIL). With
``--workers N`` (N > 1) the server process starts N workers instead of
listening itself; each worker binds every ``[smtp] listen`` address with
SO_REUSEPORT (the kernel spreads new connections over them), keeps its own
copy of the connection directory current by polling the store's revision
(as the server does), and spools what it accepts with its own group
committer.

Only the server process runs the pipeline, so no message is ever claimed
twice: each worker announces what it spooled to the server's pipeline over
a Unix datagram socket (mailpipe.spool_notify), and the pipeline's periodic
rescan of the spool queue (every second) is the backstop.
A worker that dies is restarted; workers die with the server (Linux
parent-death signal) so a killed server never leaves one holding the port.

Run by hand only for debugging: ``python -m mailpipe.smtp.worker --config PATH``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

log = logging.getLogger("mailpipe.smtp")

READY_LINE = b"mailpipe-smtp-worker-ready\n"
RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0


# --- in the server process ----------------------------------------------------


async def run_worker_pool(
    runtime: "Runtime", workers: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    command = [sys.executable, "-m", "mailpipe.smtp.worker"]
    if runtime.config.source != "embedded default":
        command += ["--config", runtime.config.source]
    async with anyio.create_task_group() as group:
        for number in range(1, workers + 1):
            await group.start(_supervise, command, number)
        log.info("SMTP worker processes ready", extra={"workers": workers})
        task_status.started()


async def _supervise(
    command: list[str], number: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    started = False
    while True:
        process = await anyio.open_process(
            [*command, "--worker-number", str(number)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=None,
        )
        try:
            assert process.stdout is not None
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if READY_LINE in line or len(line) > 4096:
                    break
            if READY_LINE not in line:
                code = await process.wait()
                message = f"SMTP worker {number} exited with code {code} before it was ready; see its log lines above"
                if not started:
                    from mailpipe.errors import ConfigError

                    raise ConfigError(message)
                log.error(message)
            else:
                if not started:
                    started = True
                    task_status.started()
                code = await process.wait()
                log.error("SMTP worker exited; restarting", extra={"worker": number, "code": code})
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
        await anyio.sleep(RESTART_DELAY)


async def _stop(process: anyio.abc.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    with anyio.move_on_after(STOP_TIMEOUT):
        await process.wait()
        return
    process.kill()
    await process.wait()


# --- in a worker process --------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the server process goes, however it goes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the server stops workers itself
        pass


async def _worker_main(runtime: "Runtime") -> None:
    from mailpipe.server import WATCH_INTERVAL, ConnectionDirectory
    from mailpipe.smtp.listener import serve_smtp
    from mailpipe.spool_notify import SpoolAnnouncer

    directory = ConnectionDirectory()

    def read() -> tuple[list, int]:
        revision = runtime.store.revision()
        return runtime.service.list(), revision

    async def watch() -> None:
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            revision = await anyio.to_thread.run_sync(runtime.store.revision)
            if revision != directory.revision:
                directory.replace(*await anyio.to_thread.run_sync(read))

    directory.replace(*await anyio.to_thread.run_sync(read))
    announcer = SpoolAnnouncer(runtime.spool.root)
    runtime.spool.subscribe(lambda message: announcer.announce(message.id))
    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    group.cancel_scope.cancel()
                    return

        group.start_soon(stop_on_signal)
        group.start_soon(watch)
        await group.start(
            lambda task_status: serve_smtp(
                runtime.config.smtp, directory, runtime.host, runtime.spool, reuse_port=True,
                task_status=task_status,
            )
        )
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.buffer.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailpipe.smtp.worker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--worker-number", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    from mailpipe.errors import MailpipeError
    from mailpipe.logs import setup_logging
    from mailpipe.runtime import Runtime

    runtime = Runtime.open(args.config)
    setup_logging(runtime.config.log_level)
    logging.getLogger().handlers[0].addFilter(_WorkerTag(args.worker_number))
    try:
        anyio.run(_worker_main, runtime, backend="asyncio")
    except (MailpipeError, BaseExceptionGroup) as error:
        problem = _operator_error(error)
        if problem is None:
            raise
        log.error(str(problem))
        return 1
    finally:
        runtime.close()
    return 0


def _operator_error(error: BaseException) -> BaseException | None:
    """The MailpipeError inside (possibly nested) task-group errors, if any."""
    from mailpipe.errors import MailpipeError

    if isinstance(error, MailpipeError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _operator_error(inner)
            if found is not None:
                return found
    return None


class _WorkerTag(logging.Filter):
    """Every log line of a worker says which one (and its pid)."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.number
        record.pid = self.pid
        return True


if __name__ == "__main__":
    sys.exit(main())
