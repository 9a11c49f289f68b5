"""``mailpipe serve``: the SMTP listener, the collectors and the pipeline.

This process runs the collectors, the SMTP listener and the listeners of
push connection types (``receives="push"``), and supervises the
pipeline process (mailpipe.server.pipeline_process; with ``[pipeline] own_process
= false`` the pipeline runs here instead). With ``--workers N`` (N > 1) the
SMTP listener moves to N worker processes (mailpipe.server.smtp_workers).

Connection changes made by the CLI (another process) or another node reach
the running server through the store's revision counter
(``next_revision``: SQLite polls it every 0.2 s, PostgreSQL wakes the
watch loop by LISTEN/NOTIFY): a disabled or deleted connection stops
accepting or collecting, an enabled one starts, without a restart.

A pull collector runs only while this node holds the connection's lease
(mailpipe.connections.leases): with one node it always does; with several nodes on one
state store, each connection is collected by one of them at a time, and
the collector's context is fenced with the lease's token.

One server per data_dir (an flock on ``data_dir/serve.lock``). SIGHUP
reloads what can change without a restart (mailpipe.reload); under systemd
(``NOTIFY_SOCKET``) the server reports READY/RELOADING/STOPPING
(mailpipe.server.sd_notify).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import anyio
import anyio.to_thread
from anyio.abc import CancelScope, TaskGroup, TaskStatus

from mailpipe.server import sd_notify
from mailpipe.errors import MailpipeError
from mailpipe.connections.leases import Lease, LeaseKeeper, LeaseTable, lease_lost, node_home, node_id
from mailpipe.connections.directory import ConnectionDirectory, read_connections, watch_connections
from mailpipe.connections.live_status import LIVE
from mailpipe.connections.metrics import METRICS
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.server.pipeline_process import run_pipeline
from mailpipe.runtime import Runtime
from mailpipe.intake.collectors import collect_context
from mailpipe.types import CollectContext, Connection, ConnectionType, IntakeContext

log = logging.getLogger("mailpipe.server")

COLLECTOR_RESTART_SECONDS = (1.0, 60.0)


@dataclass
class _RunningCollector:
    connection: Connection
    scope: CancelScope


@dataclass
class Server:
    runtime: Runtime
    directory: ConnectionDirectory = field(default_factory=ConnectionDirectory)
    collectors: dict[str, _RunningCollector] = field(default_factory=dict)
    started: anyio.Event = field(default_factory=anyio.Event)
    committer: GroupCommitter | None = None
    leases: LeaseKeeper | None = None

    def lease_keeper(self) -> LeaseKeeper:
        if self.leases is None:
            config = self.runtime.config
            table = LeaseTable(
                self.runtime.store, node_id(), node_home(config.data_dir), config.cluster.lease_seconds
            )
            table.release_left_behind()
            self.leases = LeaseKeeper(table)
            self.leases.join()
        return self.leases

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        runtime = self.runtime
        try:
            async with anyio.create_task_group() as group:
                await self._start_pipeline(group)
                # Before any collector starts: frees what a killed predecessor held.
                keeper = await anyio.to_thread.run_sync(self.lease_keeper)
                group.start_soon(keeper.renew_forever)
                await self._refresh(group)
                group.start_soon(self._watch, group)
                self._start_push_listeners(group)
                if any(t.receives == "smtp" for t in runtime.host.connection_types.values()):
                    await group.start(self._run_smtp)
                if runtime.config.http.listen:
                    from mailpipe.http.app import run_http

                    await group.start(run_http, runtime)
                log.info(
                    "mailpipe is running",
                    extra={
                        "config": runtime.config.source,
                        "data_dir": str(runtime.config.data_dir),
                        "sinks": [table["name"] for table in runtime.config.sinks],
                        "connections": len(self.directory.by_id),
                        "smtp_workers": self.workers if self.workers > 1 else 0,
                        "pipeline": "own process" if runtime.config.pipeline.own_process else "this process",
                    },
                )
                self.started.set()
                task_status.started()
        finally:
            if self.committer is not None:
                self.committer.close()

    async def _run_smtp(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The SMTP listener: in this process, or in ``--workers`` worker processes."""
        runtime = self.runtime
        if self.workers > 1:
            from mailpipe.server.smtp_workers import run_worker_pool

            await run_worker_pool(runtime, self.workers, task_status=task_status)
            return
        from mailpipe.intake.smtp.listener import serve_smtp

        await serve_smtp(runtime.config.smtp, self.directory, runtime.host, runtime.spool, task_status=task_status)

    @property
    def workers(self) -> int:
        return int(self.runtime.extras.get("workers", 1) or 1)

    async def _start_pipeline(self, group: TaskGroup) -> None:
        runtime = self.runtime
        if not runtime.config.pipeline.own_process:
            await group.start(lambda task_status: run_pipeline(
                runtime, announcements=self.workers > 1, task_status=task_status
            ))
            return
        from mailpipe.server.children import child_command, supervise
        from mailpipe.spool.notify import SpoolAnnouncer

        # Before any other process writes to the spool (see run_pipeline).
        await anyio.to_thread.run_sync(runtime.spool.recover)
        command = [*child_command("mailpipe.server.pipeline_process", runtime), "--smtp-workers", str(self.workers)]
        await group.start(supervise, command, "pipeline process")
        # What this process spools (SMTP without --workers, the collectors)
        # reaches the pipeline process as the SMTP workers' messages do.
        announcer = SpoolAnnouncer(runtime.spool.root)
        runtime.spool.subscribe(lambda message: announcer.announce(message.id))

    # --- connection changes --------------------------------------------------

    async def _watch(self, group: TaskGroup) -> None:
        runtime = self.runtime
        await watch_connections(runtime.store, runtime.service, self.directory, lambda: self._refresh(group))

    async def _refresh(self, group: TaskGroup) -> None:
        runtime = self.runtime
        connections, revision = await anyio.to_thread.run_sync(read_connections, runtime.store, runtime.service)
        self.directory.replace(connections, revision)
        wanted = {
            c.id: c
            for c in connections
            if c.enabled and self._receives(c) == "pull"
        }
        for connection_id, running in list(self.collectors.items()):
            current = wanted.get(connection_id)
            if current is None or _restart_key(current) != _restart_key(running.connection):
                log.info("stopping collector", extra={"connection": connection_id})
                running.scope.cancel()
                del self.collectors[connection_id]
        for connection_id, connection in wanted.items():
            if connection_id not in self.collectors:
                scope = CancelScope()
                self.collectors[connection_id] = _RunningCollector(connection, scope)
                group.start_soon(self._collect, connection, scope)

    def _receives(self, connection: Connection) -> str | None:
        connection_type = self.runtime.host.connection_types.get(connection.type)
        return connection_type.receives if connection_type else None

    # --- collectors and push listeners ---------------------------------------

    async def _collect(self, connection: Connection, scope: CancelScope) -> None:
        with scope:
            await self.lease_keeper().hold(connection.id, lambda lease: self._collect_leased(connection, lease))

    async def _collect_leased(self, connection: Connection, lease: Lease) -> None:
        log.info(
            "starting collector",
            extra={"connection": connection.id, "type": connection.type, "fencing_token": lease.token},
        )
        await _keep_running(
            lambda: self.runtime.host.collect(connection, self.collect_context(connection, lease)),
            "collector",
            {"connection": connection.id},
            on_error=lambda error: self._collector_failed(connection, error),
        )

    @staticmethod
    def _collector_failed(connection: Connection, error: Exception) -> None:
        METRICS.collector_errors.labels(connection.id).inc()
        LIVE.failed(connection.id, "collector", str(error))

    def _start_push_listeners(self, group: TaskGroup) -> None:
        for connection_type in self.runtime.host.connection_types.values():
            if connection_type.receives == "push":
                group.start_soon(self._serve_push, connection_type)

    async def _serve_push(self, connection_type: ConnectionType) -> None:
        context = IntakeContext(
            connections=lambda: [c for c in self.directory.by_id.values() if c.type == connection_type.name],
            collect_context=self.collect_context,
            log=logging.LoggerAdapter(log, {"connection_type": connection_type.name}),
        )
        log.info("starting push listener", extra={"type": connection_type.name})
        await _keep_running(
            lambda: self.runtime.host.serve(connection_type, context),
            "push listener",
            {"type": connection_type.name},
        )

    def collect_context(self, connection: Connection, lease: Lease | None = None) -> CollectContext:
        """The context of ``connection``'s collector; fenced with ``lease`` when given."""
        if self.committer is None:
            self.committer = GroupCommitter(self.runtime.spool)
        fence = None if lease is None else (self.lease_keeper(), lease)
        return collect_context(self.runtime, connection, self.committer, self.directory, fence)


async def _keep_running(
    run: Callable[[], Awaitable[None]],
    what: str,
    extra: dict[str, str],
    on_error: Callable[[Exception], None] = lambda error: None,
) -> None:
    """Run a plugin's long-running callable until cancelled, restarting it
    with capped exponential backoff whenever it returns or fails."""
    delay = COLLECTOR_RESTART_SECONDS[0]
    while True:
        try:
            await run()
            log.warning(f"{what} returned; restarting", extra=extra)
        except Exception as error:
            if lease_lost(error):
                raise  # not a failure to retry: another node collects now (mailpipe.connections.leases)
            on_error(error)
            log.error(f"{what} failed; restarting", extra={**extra, "error": str(error), "retry_in_seconds": delay})
        await anyio.sleep(delay)
        delay = min(delay * 2, COLLECTOR_RESTART_SECONDS[1])


def _restart_key(connection: Connection) -> tuple[Any, ...]:
    return (connection.type, connection.updated, connection.enabled)


async def serve(runtime: Runtime) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly: whatever was not yet
    stored stays in the spool for the next start. SIGHUP reloads
    (mailpipe.reload) and is passed on to the child processes."""
    with hold_data_dir(runtime.config.data_dir):
        server = Server(runtime)
        LIVE.attach(runtime.store)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_handle_signals, server, group.cancel_scope)
                await group.start(server.run)
                sd_notify.ready("serving")
        finally:
            sd_notify.stopping()  # again, for a stop that was not asked for (an error)
    log.info("mailpipe stopped")


async def _handle_signals(server: Server, scope: CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for received in signals:
            if received == signal.SIGHUP:
                _reload(server)
                continue
            log.info("stopping on signal", extra={"signal": signal.Signals(received).name})
            sd_notify.stopping()  # now, while the children and sessions are stopped
            scope.cancel()
            return


def _reload(server: Server) -> None:
    from mailpipe.server.children import signal_children
    from mailpipe.reload import reload_config

    sd_notify.reloading()
    reload_config(server.runtime.config, server.runtime.host)
    # Each child re-reads the file itself and applies its own part (the
    # pipeline process its log level, SMTP workers their certificates).
    signal_children(signal.SIGHUP)
    if server.started.is_set():
        sd_notify.ready("serving")


class AlreadyRunning(MailpipeError):
    pass


LOCK_FILE = "serve.lock"


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Be the only ``mailpipe serve`` on ``data_dir`` while the block runs.

    Two servers on one data_dir would run two pipelines on one spool. An
    flock on ``data_dir/serve.lock`` (released by the kernel however the
    process ends, so a crash leaves no stale lock) decides; the file holds
    the holder's pid for the refusal message. The descriptor is not
    inherited by children (O_CLOEXEC): the lock goes with this process.
    """
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise MailpipeError(f"cannot create {path}: {error.strerror}; check data_dir and its permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "not yet written"
            raise AlreadyRunning(
                f"another mailpipe serve (pid {holder}) is already running on data_dir {data_dir} "
                f"(it holds {path}); stop it first, or give this one a config with another data_dir"
            ) from None
        except OSError as error:
            raise MailpipeError(
                f"cannot lock {path}: {error.strerror}; data_dir must be on a filesystem with file locks"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
