"""The one SMTP listener that every SMTP connection shares.

``mailpipe serve`` starts it (core/server/master.py) when a connection type with
``receives="smtp"`` is installed. It listens on every ``[smtp] listen``
address in the server's own asyncio event loop (aiosmtpd is asyncio-only)
and routes each recipient by its unique journal address, using the
server's in-memory connection directory, so a connection that is disabled,
enabled or deleted through the CLI is refused or accepted from the next
RCPT TO on, without a restart.

With ``mailpipe serve --workers N`` (N > 1) the listening moves to N worker
processes that share each port through SO_REUSEPORT (see worker.py); this
process supervises them (and a pipeline process: mailpipe.server.pipeline_process).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING

import anyio
import sniffio
from anyio.abc import TaskStatus

from mailpipe.config import SmtpConfig
from mailpipe.errors import ConfigError
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.reload import on_reload
from mailpipe.message.addresses import ListenAddress, parse_listen
from mailpipe.logs import ConditionLog
from mailpipe.intake.smtp.limits import (
    ConnectionLimits,
    quiet_accept_errors,
    raise_open_files_limit,
    total_limit,
)
from mailpipe.intake.smtp.protocol import ListenerContext, MailpipeSMTP
from mailpipe.common.networks import TrustedBalancers
from mailpipe.intake.smtp.routing import Directory, Router

if TYPE_CHECKING:
    from mailpipe.plugin_host import PluginHost
    from mailpipe.spool.queue import Spool

log = logging.getLogger("mailpipe.smtp")


async def serve_smtp(
    settings: SmtpConfig,
    directory: Directory,
    host: "PluginHost",
    spool: "Spool",
    *,
    reuse_port: bool = False,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    _require_asyncio()
    addresses = parse_listen(settings.listen)
    open_files = raise_open_files_limit()
    conditions = ConditionLog(log)
    # Behind a listed load balancer the per-client count is by the client
    # in its PROXY header (protocol.py), so it applies there too.
    limits = ConnectionLimits(
        total_limit(settings.max_connections, open_files), settings.max_connections_per_client, conditions
    )
    context = ListenerContext(
        settings=settings,
        router=Router(directory, host, settings),
        committer=GroupCommitter(spool),
        hostname=settings.hostname or socket.getfqdn(),
        tls_context=build_tls_context(settings),
        limits=limits,
        balancers=TrustedBalancers(settings.proxy_protocol_from),
    )
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    stop_reloading = on_reload(lambda _started_with, new: reload_tls(context, new.smtp))
    restore_exception_handler = quiet_accept_errors(loop, conditions)
    try:
        for address in addresses:
            servers.append(await _bind(loop, context, address, reuse_port))
        log.info(
            "SMTP listener ready",
            extra={
                "listen": [str(a) for a in addresses],
                "tls": context.tls_context is not None,
                "require_tls": settings.require_tls,
                "proxy_protocol_from": list(settings.proxy_protocol_from),
                "max_message_size": settings.max_message_size,
                "open_files_limit": open_files,
                "max_connections": limits.total,
                "max_connections_per_client": limits.per_client,
            },
        )
        task_status.started()
        await anyio.sleep_forever()
    finally:
        stop_reloading()
        for listening in servers:
            listening.close()
        # Sessions still open are cut: a message not yet acknowledged stays
        # the sender's to retry; the spool drops its partial file at start.
        for session in list(context.sessions):
            if session.transport is not None:
                session.transport.close()
        context.committer.close()
        restore_exception_handler()


async def _bind(
    loop: asyncio.AbstractEventLoop, context: ListenerContext, address: ListenAddress, reuse_port: bool
) -> asyncio.AbstractServer:
    try:
        return await loop.create_server(
            lambda: MailpipeSMTP(context),
            host=address.host,
            port=address.port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=512,
        )
    except OSError as error:
        raise ConfigError(
            f"cannot listen for SMTP on {address}: {error.strerror or error}; "
            "another program may be using the port, or the address is not on this machine — "
            "change [smtp] listen"
        ) from None


def build_tls_context(settings: SmtpConfig) -> ssl.SSLContext | None:
    """STARTTLS with the operator's certificate chain and key (clients are not asked for one)."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"[smtp] tls_cert {settings.tls_cert!r} / tls_key {settings.tls_key!r} cannot be loaded: "
            f"{getattr(error, 'strerror', None) or error}; point them at a PEM certificate chain and its "
            "private key"
        ) from None
    return context


def reload_tls(context: ListenerContext, settings: SmtpConfig) -> list[str]:
    """SIGHUP: sessions from now on get the certificate now in the files
    (renewed in place or at a new path); open sessions keep theirs."""
    if context.tls_context is None or not settings.tls_cert:
        return []  # turning STARTTLS on or off needs a restart (mailpipe.reload)
    context.tls_context = build_tls_context(settings)
    log.info("TLS certificate reloaded", extra={"tls_cert": settings.tls_cert})
    return ["smtp.tls_cert", "smtp.tls_key"]


def _require_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:  # pragma: no cover - always inside a loop here
        library = "none"
    if library != "asyncio":
        raise ConfigError(
            f"the SMTP listener runs on asyncio (aiosmtpd is asyncio-only) but the server runs on "
            f"{library}; unset MAILPIPE_ASYNC_BACKEND or set it to asyncio"
        )

