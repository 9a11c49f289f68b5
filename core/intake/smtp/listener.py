"""The one SMTP listener that every SMTP connection shares.

``mailpipe serve`` starts it (core/server/master.py) when a connection type with
``receives="smtp"`` is installed. It listens on every ``[smtp] listen``
address in the server's own asyncio event loop (aiosmtpd is asyncio-only)
and routes each recipient by its unique journal address, using the
server's in-memory connection directory, so a connection that is disabled,
enabled or deleted through the CLI is refused or accepted from the next
RCPT TO on, without a restart.

With ``mailpipe serve --workers N`` (N > 1) the listening moves to N worker
processes that share each port through SO_REUSEPORT (mailpipe.server.smtp_workers);
this process binds their sockets (:func:`bind_worker_sockets`) and
supervises them (and a pipeline process: mailpipe.server.pipeline_process).
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
from mailpipe.common.networks import TrustedBalancers, balancer_warnings
from mailpipe.intake.smtp.routing import Directory, Router

if TYPE_CHECKING:
    from mailpipe.plugin_host import PluginHost
    from mailpipe.spool.queue import Spool

log = logging.getLogger("mailpipe.smtp")

#: Group-commit batches of SMTP messages that may sync at once. With one,
#: a session whose message ended while a batch was syncing waited for that
#: sync and then its own. bench_smtp, sessions reused, A/B pairs, msg/s:
#: one SMTP process 768, 831 (1 lane) against 868, 953 (2 lanes); 2 lanes
#: 879, 966 against 3 lanes 966, 1,034; 3 against 4 inconclusive (989 and
#: 956 against 932 and 1,127). `--workers 2`, 1 against 2 lanes: 1,144 and
#: 1,165 against 1,355 and 1,314. CPU per message fell with each step.
SYNC_LANES = 3


async def serve_smtp(
    settings: SmtpConfig,
    directory: Directory,
    host: "PluginHost",
    spool: "Spool",
    *,
    reuse_port: bool = False,
    sockets: list[socket.socket] | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SMTP until cancelled: on every ``[smtp] listen`` address, or on
    ``sockets`` already bound and listening (an SMTP worker's, see
    :func:`bind_worker_sockets`)."""
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
        committer=GroupCommitter(spool, lanes=SYNC_LANES),
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
        if sockets is not None:
            for listening_socket in sockets:
                servers.append(await loop.create_server(lambda: MailpipeSMTP(context), sock=listening_socket))
        else:
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
        for warning in balancer_warnings(settings.proxy_protocol_from):
            log.warning(warning)
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
        raise _cannot_listen(address, error) from None


def bind_worker_sockets(settings: SmtpConfig, workers: int) -> list[list[socket.socket]]:
    """For ``serve --workers N``: each worker's listening sockets, one per
    ``[smtp] listen`` address (per address family where a host name has
    several), all bound and listening here, before any worker starts.

    Each worker used to bind its own sockets once it had started. The first
    one ready then took every connection made before the others were
    listening (about 1.5 s per worker), and a sending server that keeps its
    sessions open, as Office 365 does, kept all of them on that one worker
    for as long as the sessions lasted (measured: 20 sessions opened at
    start, 20 on one worker of two). Bound together here, the kernel spreads
    connections over all of them from the first one on; a connection that
    arrives before its worker serves (or while it restarts) waits in its
    socket's queue instead of being refused.
    """
    per_worker: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for address in parse_listen(settings.listen):
            for family, socket_address in _socket_addresses(address):
                for sockets in per_worker:
                    listening = _listening_socket(family, socket_address, address)
                    # Port 0: the first worker's socket picks the port, the others share it.
                    socket_address = (socket_address[0], listening.getsockname()[1], *socket_address[2:])
                    sockets.append(listening)
    except BaseException:
        for sockets in per_worker:
            for listening in sockets:
                listening.close()
        raise
    return per_worker


def _socket_addresses(address: ListenAddress) -> list[tuple[int, tuple]]:
    """What asyncio's create_server binds for ``address``: every address
    its host resolves to (every interface, IPv4 and IPv6, for no host)."""
    try:
        found = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen for SMTP on {address}: {error.strerror}; change [smtp] listen") from None
    unique: list[tuple[int, tuple]] = []
    for family, _type, _protocol, _name, socket_address in found:
        if (family, socket_address) not in unique:
            unique.append((family, socket_address))
    return unique


def _listening_socket(family: int, socket_address: tuple, address: ListenAddress) -> socket.socket:
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        listening.bind(socket_address)
        listening.listen(512)
    except OSError as error:
        listening.close()
        raise _cannot_listen(address, error) from None
    return listening


def _cannot_listen(address: ListenAddress, error: OSError) -> ConfigError:
    return ConfigError(
        f"cannot listen for SMTP on {address}: {error.strerror or error}; "
        "another program may be using the port, or the address is not on this machine — "
        "change [smtp] listen"
    )


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

