"""mailpipe's SMTP session: aiosmtpd's protocol with streamed DATA and routing.

aiosmtpd supplies the connection handling, HELO, STARTTLS, the PROXY
protocol parser, RSET/NOOP/QUIT/HELP and the timeouts. mailpipe replaces:

- ``EHLO``: advertises SIZE, 8BITMIME, SMTPUTF8, PIPELINING,
  ENHANCEDSTATUSCODES and STARTTLS (no AUTH: journaling servers are told
  apart by address and allow-list, not by password);
- ``MAIL``: accepts the null sender, checks ``SIZE=`` against the limit
  (``552 5.3.4``) and ``BODY=7BIT|8BITMIME``;
- ``RCPT``: routes each recipient to a connection (see routing.py);
- ``DATA``: streams the message into one spool file per connection,
  replies ``250`` with the queue id only after the spool fsynced it;
- the PROXY header: read only from the load balancers in ``[smtp]
  proxy_protocol_from`` (proxy.py); its client address then stands for the
  balancer's everywhere (limits, allow-lists, logs, the message's ``smtp``
  facts), and a listed balancer's connection without a valid header is
  dropped with a log line saying why.

What of aiosmtpd's private state these need (the command stream, the
transaction resets, the idle timer, the address parser) is reached
through ``aiosmtpd_compat.SMTPBase``'s names, never directly.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import Envelope as AiosmtpdEnvelope, Session

from mailpipe.config import SmtpConfig
from mailpipe.spool.disk_space import storage_full
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.intake.smtp.aiosmtpd_compat import SMTPBase
from mailpipe.intake.smtp.data import PIECE_LIMIT, read_data
from mailpipe.intake.smtp.limits import ConnectionLimits
from mailpipe.common.networks import PROXY_HEADER_TIMEOUT, TrustedBalancers, proxied_source
from mailpipe.connections.metrics import METRICS
from mailpipe.intake.smtp.receive import MessageReceiver, Route, SessionFacts, storage_reply
from mailpipe.intake.smtp.routing import Router
from mailpipe.types import Envelope

log = logging.getLogger("mailpipe.smtp")

#: More recipients than this in one transaction get ``452 4.5.3`` (RFC 5321 4.5.3.1.8: at least 100).
MAX_RECIPIENTS = 1000
# <local@domain> followed by parameters; anything unusual (source routes,
# quoted local parts) goes to aiosmtpd's full RFC 5321 parser instead.
_SIMPLE_PATH = re.compile(r'<([^<>\s"\\(),:;@]*@[^<>\s"\\(),:;@\[\]]+|)>(.*)$', re.DOTALL)


@dataclass
class ListenerContext:
    """What every session shares: settings, routing, the spool's committer."""

    settings: SmtpConfig
    router: Router
    committer: GroupCommitter
    hostname: str
    tls_context: ssl.SSLContext | None = None
    sessions: set["MailpipeSMTP"] = field(default_factory=set)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    balancers: TrustedBalancers = field(default_factory=lambda: TrustedBalancers(()))


class MailpipeSession(Session):
    #: the client address from a trusted PROXY header; None when there was none
    proxied_ip: str | None = None


class Transaction(AiosmtpdEnvelope):
    """aiosmtpd's envelope plus the routed recipients, per connection."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}


class ProxyHandler:
    """aiosmtpd calls ``handle_PROXY`` with a valid PROXY header (v1 or v2),
    only on connections from a listed load balancer (see MailpipeSMTP).

    The proxied source becomes the session's client: ``Envelope.proxied_ip``
    (what allow-lists check), the per-client connection count, the logs and
    the message's ``smtp.peer_ip``. A header without a source address
    (``PROXY UNKNOWN``, v2 ``LOCAL`` health checks) keeps the TCP peer.
    Returning False closes the connection without a greeting.
    """

    async def handle_PROXY(self, server: "MailpipeSMTP", session: MailpipeSession, envelope: Any, proxy_data: Any) -> bool:
        session.proxied_ip = proxied_source(proxy_data)
        return server.proxy_header_read()


class MailpipeSMTP(SMTPBase):
    # aiosmtpd sizes its StreamReader by this: DATA is read in pieces of up
    # to PIECE_LIMIT. Command lines are still held to command_size_limit.
    line_length_limit = PIECE_LIMIT

    def __init__(self, context: ListenerContext) -> None:
        settings = context.settings
        super().__init__(
            ProxyHandler(),
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=context.hostname,
            ident="ESMTP mailpipe",
            tls_context=context.tls_context,
            require_starttls=bool(settings.require_tls and context.tls_context),
            # An inactivity timeout (RFC 5321 4.5.3.2: at least 5 minutes),
            # re-armed by every command and by every chunk received in DATA.
            timeout=settings.idle_timeout,
            # Set per connection, for listed load balancers only (connection_made).
            proxy_protocol_timeout=None,
        )
        self.context = context
        # Room for SIZE/BODY/SMTPUTF8 parameters (a per-session table: see aiosmtpd_compat).
        self.command_size_limits.update({"MAIL": 1024, "RCPT": 1024})
        self.envelope: Transaction | None = None
        self._admitted = False  # counted under the connection limits
        self._counted_ip: str | None = None  # the client it is counted under
        self._refused = False
        self._receiving_data = False
        self._awaiting_proxy_header = False
        self._client_closed = False
        self._bytes_received = 0
        self._header_deadline = 0.0

    # --- session plumbing ---------------------------------------------------

    def create_session(self) -> MailpipeSession:
        return MailpipeSession(self.loop)

    def create_transaction(self) -> Transaction:
        return Transaction()

    def connection_made(self, transport: Any) -> None:
        if not self._admitted:  # not the second call STARTTLS makes
            peer = transport.get_extra_info("peername")
            peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            # A balancer's client is known only from its header: until then
            # only the total limit applies (ProxyHandler counts the client).
            self._awaiting_proxy_header = self.context.balancers.sends_header(peer_ip)
            client_ip = None if self._awaiting_proxy_header else peer_ip
            refusal = self.context.limits.admit(client_ip)
            if refusal is not None:
                # Before any session exists: nothing to clean up but the socket.
                self._refused = True
                transport.write(f"421 4.7.0 {self.context.hostname} {refusal}\r\n".encode())
                transport.close()
                return
            self._admitted = True
            self._counted_ip = client_ip
            if self._awaiting_proxy_header:
                self.expect_proxy_header(PROXY_HEADER_TIMEOUT)
                self._header_deadline = self.loop.time() + PROXY_HEADER_TIMEOUT
        # STARTTLS calls this again and aiosmtpd starts a new session: the
        # client behind the balancer is still the same one.
        proxied_ip = self.session.proxied_ip if self.session is not None else None
        super().connection_made(transport)
        if self.session is not None:
            self.session.proxied_ip = proxied_ip
        self.context.sessions.add(self)

    def proxy_header_read(self) -> bool:
        """A listed balancer's header was valid: count the connection under its
        client; False (a 421 written) when that client is over its limit."""
        self._awaiting_proxy_header = False
        client_ip = self.client_ip
        refusal = self.context.limits.identify(client_ip)
        if refusal is not None:
            assert self.transport is not None
            self.transport.write(f"421 4.7.0 {self.context.hostname} {refusal}\r\n".encode())
            return False
        self._counted_ip = client_ip
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._awaiting_proxy_header:
            self._log_missing_proxy_header()
        if self._admitted and self in self.context.sessions:
            self.context.limits.release(self._counted_ip)
        self.context.sessions.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        self._client_closed = True
        return super().eof_received()

    def _log_missing_proxy_header(self) -> None:
        """Why a listed balancer's connection ended before its PROXY header was
        accepted: one rate-limited warning per balancer and cause."""
        parsed = self.session.proxy_data if self.session else None
        if parsed is not None and getattr(parsed, "error", ""):
            kind, cause = "invalid", f"its PROXY header is invalid ({parsed.error})"
        elif self._client_closed and self._bytes_received == 0:
            # A TCP health check (HAProxy's `check` without check-send-proxy):
            # connects and closes; not worth a warning.
            log.debug("a load balancer connected and closed without sending anything",
                      extra={"peer_ip": self.peer_ip})
            return
        elif self._client_closed:
            kind, cause = "cut", "it closed the connection before its PROXY header was complete"
        elif self.loop.time() < self._header_deadline:
            # Closed on this side before the timeout: the listener is stopping.
            log.debug("a load balancer's connection was closed before its PROXY header arrived",
                      extra={"peer_ip": self.peer_ip})
            return
        else:
            kind, cause = "timeout", f"it sent no complete PROXY header within {PROXY_HEADER_TIMEOUT:g} seconds"
        self.context.limits.conditions.warn(
            f"smtp_proxy_header:{self.peer_ip}:{kind}",
            f"SMTP connection from a load balancer dropped: {cause}. [smtp] proxy_protocol_from lists this "
            "address, so each of its connections must start with a PROXY protocol header (HAProxy: "
            "send-proxy-v2 on the server line); remove the address from the list if it is not a balancer",
            peer_ip=self.peer_ip, cause=cause,
        )

    def data_received(self, data: bytes) -> None:
        self._bytes_received += len(data)
        super().data_received(data)
        if self._receiving_data:
            # A sender that keeps sending is never idle, however slowly its
            # bytes arrive (DATA is read in 64 KiB pieces, which a slow link
            # may take longer than the idle timeout to fill).
            self.reset_idle_timer()

    @property
    def peer_ip(self) -> str:
        """The TCP peer: the client, or the load balancer it came through."""
        peer = self.session.peer if self.session else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    @property
    def client_ip(self) -> str:
        """The SMTP client: a trusted PROXY header's source, else the TCP peer."""
        proxied = self.session.proxied_ip if self.session else None
        return proxied or self.peer_ip

    @property
    def balancer_ip(self) -> str | None:
        """The load balancer the client came through; None for a direct client."""
        return self.peer_ip if self.session is not None and self.session.proxied_ip else None

    async def check_helo_needed(self, helo: str = "HELO") -> bool:
        assert self.session is not None
        if not self.session.host_name:
            await self.push("503 5.5.1 send EHLO (or HELO) first")
            return True
        return False

    # --- commands ------------------------------------------------------------

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self.reset_transaction()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [
            self.hostname,
            f"SIZE {self.data_size_limit}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_context and not self.uses_tls:
            lines.append("STARTTLS")
        lines.append("HELP")
        await self.push("\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}")

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push("502 5.5.1 AUTH is not offered here")

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]"
        rest = self.strip_keyword("FROM:", arg or "")
        if rest is None:
            await self.push(syntax)
            return
        address, parameters = self._parse_path(rest)
        if address is None:
            await self.push("553 5.1.7 malformed sender address")
            return
        assert self.envelope is not None and self.session is not None
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 nested MAIL command; send RSET first")
            return
        problem = self._check_mail_parameters(parameters)
        if problem:
            await self.push(problem)
            return
        self.envelope.mail_from = address
        self.envelope.mail_options = parameters.split()
        await self.push("250 2.1.0 OK")

    def _check_mail_parameters(self, text: str) -> str | None:
        assert self.session is not None
        if text.strip() and not self.session.extended_smtp:
            return "501 5.5.4 MAIL parameters need EHLO, not HELO"
        for parameter in text.split():
            key, _, value = parameter.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit():
                    return "501 5.5.4 SIZE needs a number of bytes"
                if self.data_size_limit and int(value) > self.data_size_limit:
                    return f"552 5.3.4 message size exceeds the limit of {self.data_size_limit} bytes"
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
            elif key == "SMTPUTF8":
                if value:
                    return "501 5.5.4 SMTPUTF8 takes no value"
            else:
                return f"555 5.5.4 MAIL parameter {key} is not supported"
        return None

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None and self.session is not None
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 need MAIL command first")
            return
        rest = self.strip_keyword("TO:", arg or "")
        address, parameters = self._parse_path(rest) if rest is not None else (None, "")
        if not address:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if parameters.strip():
            await self.push("555 5.5.4 RCPT parameters are not supported")
            return
        if len(self.envelope.rcpt_tos) >= MAX_RECIPIENTS:
            await self.push(f"452 4.5.3 too many recipients; at most {MAX_RECIPIENTS} per message")
            return
        envelope = Envelope(
            peer_ip=self.peer_ip,
            helo=self.session.host_name or "",
            mail_from=self.envelope.mail_from,
            rcpt_to=address,
            proxied_ip=self.session.proxied_ip,
        )
        routed = await self.context.router.route(envelope)
        if routed.connection is None:
            METRICS.recipients_refused.labels(routed.refusal_reason or "refused", routed.reply[:1] + "xx").inc()
            log.info(
                "recipient refused",
                extra={"rcpt_to": address, "peer_ip": envelope.client_ip, "balancer_ip": self.balancer_ip,
                       "reason": routed.refusal_reason, "reply": routed.reply},
            )
        else:
            route = self.envelope.routes.get(routed.connection.id)
            if route is None:
                route = self.envelope.routes[routed.connection.id] = Route(routed.connection, arrival=routed.arrival)
            if address not in route.recipients:
                route.recipients.append(address)
            self.envelope.rcpt_tos.append(address)
        await self.push(routed.reply)

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None and self.session is not None
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 need MAIL command first")
            return
        if not self.envelope.routes:
            await self.push("554 5.5.1 no valid recipients")
            return
        try:
            receiver = await self._open_receiver()
        except OSError as error:
            if not storage_full(error):  # disk full is logged by the spool, rate-limited
                log.error("could not create spool files for a message", extra={"error": str(error)})
            self.end_transaction()
            await self.push(storage_reply(error))
            return
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._receiving_data = True
            await read_data(self.command_reader, receiver.feed, self.reset_idle_timer)
            self._receiving_data = False
            reply = await receiver.finish()
        finally:
            self._receiving_data = False
            receiver.abort()
            self.end_transaction()
        await self.push(reply)

    async def _open_receiver(self) -> MessageReceiver:
        assert self.envelope is not None and self.session is not None
        return await MessageReceiver.open(
            self.context.committer,
            list(self.envelope.routes.values()),
            self.context.settings,
            SessionFacts(
                peer_ip=self.client_ip,
                balancer_ip=self.balancer_ip,
                helo=self.session.host_name or "",
                mail_from=self.envelope.mail_from,
                tls=self.uses_tls,
            ),
        )

    # --- helpers -------------------------------------------------------------

    def _parse_path(self, text: str) -> tuple[str | None, str]:
        """``(address, parameters)``; address ``""`` is the null path ``<>``,
        ``None`` means unparseable."""
        text = text.lstrip()
        match = _SIMPLE_PATH.match(text)
        if match:
            return match.group(1), match.group(2)
        address, rest = self.parse_address(text)
        if address == "<>":
            address = ""
        return address, rest or ""
