"""Child processes of ``mailpipe serve`` (the pipeline, SMTP workers): starting, restarting, stopping.

The server process starts each child with ``python -m MODULE --config PATH``
and waits for the child to print its ready line. A child that exits before
it was ever ready stops the server with a ConfigError (its own log lines say
why); one that dies later is restarted after ``RESTART_DELAY``. Children get
SIGTERM when the server goes, however it goes (Linux parent-death signal),
so a killed server never leaves one behind holding a port or the spool.
A SIGHUP the server gets (a reload: mailpipe.reload) is passed on to every
running child, which reloads its own part; a child ignores SIGHUP until it
can reload, so a reload never kills one.

The child side: :func:`run_child` opens the runtime, tags every log line
with the child's name and pid, runs the child's body and turns operator
errors into one log line and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

import anyio
import anyio.abc
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime

log = logging.getLogger("mailpipe.server")

READY_LINE = b"mailpipe-child-ready\n"
RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0

#: The children this process supervises that are running and ready.
_running: set[anyio.abc.Process] = set()


# --- in the server process ----------------------------------------------------


def signal_children(signal_number: int) -> int:
    """Send ``signal_number`` to every running child; how many were sent it."""
    sent = 0
    for process in list(_running):
        if process.returncode is None:
            try:
                process.send_signal(signal_number)
                sent += 1
            except ProcessLookupError:  # it exited just now; its supervisor restarts it
                pass
    return sent


def child_command(module: str, runtime: "Runtime") -> list[str]:
    command = [sys.executable, "-m", module]
    if runtime.config.source != "embedded default":
        command += ["--config", runtime.config.source]
    return command


async def supervise(
    command: list[str],
    name: str,
    pass_fds: Sequence[int] = (),
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``command`` until cancelled, restarting it when it dies; each
    start inherits the descriptors ``pass_fds`` (an SMTP worker's sockets)."""
    started = False
    while True:
        process = await anyio.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, pass_fds=pass_fds
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
                message = f"{name} exited with code {code} before it was ready; see its log lines above"
                if not started:
                    from mailpipe.errors import ConfigError

                    raise ConfigError(message)
                log.error(message)
            else:
                # Only now: until it is ready a child may still be importing,
                # before it ignores SIGHUP (a child starting now reads the
                # current config file anyway).
                _running.add(process)
                if not started:
                    started = True
                    task_status.started()
                code = await process.wait()
                log.error("child process exited; restarting", extra={"child": name, "code": code})
        finally:
            _running.discard(process)
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


# --- in a child process ---------------------------------------------------------


ChildBody = Callable[["Runtime", Callable[[], None]], Awaitable[None]]


def run_child(prog: str, name: str, body: ChildBody, argv: list[str] | None = None) -> int:
    """A child's ``main``: ``body(runtime, ready)`` runs until SIGTERM; it
    calls ``ready()`` once it is serving."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", default=None)
    parser.add_argument("--worker-number", type=int, default=0)
    parser.add_argument("--smtp-workers", type=int, default=1, help="the server's --workers")
    parser.add_argument("--listen-fds", default="", help="listening sockets inherited from the server")
    args = parser.parse_args(argv)
    # Until the reload handler below is in place, a SIGHUP passed on by the
    # server must not kill this child (the default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent()
    from mailpipe.common import event_loop
    from mailpipe.errors import MailpipeError, operator_errors
    from mailpipe.logs import setup_logging
    from mailpipe.runtime import Runtime

    runtime = Runtime.open(args.config)
    runtime.extras["workers"] = args.smtp_workers
    runtime.extras["listen_fds"] = [int(fd) for fd in args.listen_fds.split(",") if fd]
    setup_logging(runtime.config.log_level)
    label = f"{name} {args.worker_number}" if args.worker_number else name
    logging.getLogger().handlers[0].addFilter(_ChildTag(label, args.worker_number))
    try:
        event_loop.run(_until_signalled, body, runtime)
    except (MailpipeError, BaseExceptionGroup) as error:
        problems = operator_errors(error)
        if not problems:
            raise
        log.error("; ".join(str(problem) for problem in problems))
        return 1
    finally:
        runtime.close()
    return 0


async def _until_signalled(body: ChildBody, runtime: "Runtime") -> None:
    def ready() -> None:
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.buffer.flush()

    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    group.cancel_scope.cancel()
                    return

        async def reload_on_signal() -> None:
            from mailpipe.reload import reload_config

            with anyio.open_signal_receiver(signal.SIGHUP) as signals:
                async for _ in signals:
                    # In the event loop, not a thread: what an applier swaps
                    # (a TLS context) is read by the loop. A few small files.
                    reload_config(runtime.config, runtime.host)

        group.start_soon(stop_on_signal)
        group.start_soon(reload_on_signal)
        await body(runtime, ready)
        group.cancel_scope.cancel()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the server process goes, however it goes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the server stops its children itself
        pass


class _ChildTag(logging.Filter):
    """Every log line of a child says which one (and its pid)."""

    def __init__(self, label: str, number: int) -> None:
        super().__init__()
        self.label = label
        self.number = number
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.label
        if self.number:
            record.worker = self.number
        record.pid = self.pid
        return True
