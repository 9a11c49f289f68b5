"""mailpipe's SMTP session: the commands, on the connection of connection.py.

- ``EHLO`` advertises SIZE, 8BITMIME, SMTPUTF8, PIPELINING,
  ENHANCEDSTATUSCODES and STARTTLS (no AUTH: journaling servers are told
  apart by address and allow-list, not by password);
- ``MAIL`` accepts the null sender, checks ``SIZE=`` against the limit
  (``552 5.3.4``) and ``BODY=7BIT|8BITMIME``;
- ``RCPT`` routes each recipient to a connection (see routing.py);
- ``DATA`` streams the message into one spool file per connection and
  replies ``250`` with the queue id only after the spool fsynced it;
- ``HELO``, ``RSET``, ``NOOP``, ``QUIT``, ``HELP``, ``VRFY``, ``EXPN``,
  ``STARTTLS`` as RFC 5321 and RFC 3207 say; ``require_tls`` answers
  ``530`` to everything but EHLO, NOOP, STARTTLS and QUIT before STARTTLS;
- the PROXY header: read only from the load balancers in ``[smtp]
  proxy_protocol_from``; its client address then stands for the
  balancer's everywhere (limits, allow-lists, logs, the message's ``smtp``
  facts), and a listed balancer's connection without a valid header is
  dropped with a log line saying why.
"""

from __future__ import annotations

import logging
import re
import ssl
from dataclasses import dataclass, field
from email._header_value_parser import get_addr_spec, get_angle_addr  # the stdlib's RFC 5322 parser
from email.errors import HeaderParseError
from typing import Awaitable, Callable

from mailpipe.common.networks import PROXY_HEADER_TIMEOUT, TrustedBalancers, proxied_source
from mailpipe.config import SmtpConfig
from mailpipe.connections.metrics import METRICS
from mailpipe.intake.smtp.connection import UNKNOWN_COMMAND_LIMIT, ConnectionBase, surrogate_text
from mailpipe.intake.smtp.data import DataScanner
from mailpipe.intake.smtp.limits import ConnectionLimits
from mailpipe.intake.smtp.proxy_header import read_proxy_header
from mailpipe.intake.smtp.receive import MessageReceiver, Route, SessionFacts, storage_reply
from mailpipe.intake.smtp.routing import Routed, Router
from mailpipe.spool.disk_space import storage_full
from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.types import Envelope

log = logging.getLogger("mailpipe.smtp")

#: More recipients than this in one transaction get ``452 4.5.3`` (RFC 5321 4.5.3.1.8: at least 100).
MAX_RECIPIENTS = 1000
#: RFC 5321 4.5.3.1.4: 512 octets per command line, CRLF included; SIZE,
#: BODY and SMTPUTF8 parameters and long addresses need more for MAIL/RCPT.
COMMAND_LINE_LIMIT = 512
PATH_COMMAND_LINE_LIMIT = 1024
#: What may be sent before STARTTLS when ``require_tls`` is on (RFC 3207 4).
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
# <local@domain> followed by parameters; anything unusual (source routes,
# quoted local parts) goes to the stdlib's full RFC 5322 address parser.
_SIMPLE_PATH = re.compile(r'<([^<>\s"\\(),:;@]*@[^<>\s"\\(),:;@\[\]]+|)>(.*)$', re.DOTALL)
_HELP = {
    "DATA": "DATA", "EHLO": "EHLO hostname", "HELO": "HELO hostname", "HELP": "HELP [command]",
    "MAIL": "MAIL FROM: <address> [SP <mail-parameters>]", "NOOP": "NOOP", "QUIT": "QUIT",
    "RCPT": "RCPT TO: <address>", "RSET": "RSET", "STARTTLS": "STARTTLS", "VRFY": "VRFY <address>",
}


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


@dataclass
class Transaction:
    """One MAIL ... DATA transaction: sender, recipients, and the recipients
    routed to each connection."""

    mail_from: str | None = None
    rcpt_tos: list[str] = field(default_factory=list)
    routes: dict[str, Route] = field(default_factory=dict)


class MailpipeSMTP(ConnectionBase):
    def __init__(self, context: ListenerContext) -> None:
        super().__init__(context.settings.idle_timeout)
        self.context = context
        self.hostname = context.hostname
        self.max_message_size = context.settings.max_message_size
        #: the TCP peer: the client, or the load balancer it came through
        self.peer_ip = ""
        #: the client address from a trusted PROXY header; None when there was none
        self.proxied_ip: str | None = None
        #: aiosmtpd's parsed PROXY header (or its reason for refusing it)
        self.proxy_data: object | None = None
        self.helo = ""
        self.extended_smtp = False
        self.uses_tls = False
        self.transaction = Transaction()
        self._receiver: MessageReceiver | None = None
        self._scanner: DataScanner | None = None
        self._unknown_commands = 0
        self._admitted = False  # counted under the connection limits
        self._counted_ip: str | None = None  # the client it is counted under
        self._refused = False
        self._awaiting_proxy_header = False
        self._client_closed = False
        self._bytes_received = 0
        self._header_deadline = 0.0

    # --- the connection ------------------------------------------------------

    def connection_made(self, transport: object) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        # A balancer's client is known only from its header: until then
        # only the total limit applies (proxy_header_read counts the client).
        self._awaiting_proxy_header = self.context.balancers.sends_header(self.peer_ip)
        client_ip = None if self._awaiting_proxy_header else self.peer_ip
        refusal = self.context.limits.admit(client_ip)
        if refusal is not None:
            self._refused = True
            self.reply(f"421 4.7.0 {self.hostname} {refusal}")
            self.close()
            return
        self._admitted = True
        self._counted_ip = client_ip
        self.context.sessions.add(self)
        if self._awaiting_proxy_header:
            self.touch(PROXY_HEADER_TIMEOUT)
            self._header_deadline = self.loop.time() + PROXY_HEADER_TIMEOUT
            self.start_step(self._read_proxy_header)
        else:
            self.reply(f"220 {self.hostname} ESMTP mailpipe")
            self.flush()

    async def _read_proxy_header(self) -> None:
        try:
            self.proxy_data = await read_proxy_header(self.unread, self.receive_more)
        except (ConnectionError, ValueError):
            self.close()  # cut, or no end: connection_lost says which
            return
        if not self.proxy_data:
            self.close()  # invalid: connection_lost logs the parser's reason
            return
        self.proxied_ip = proxied_source(self.proxy_data)
        if not self.proxy_header_read():
            self.close()
            return
        self.touch()
        self.reply(f"220 {self.hostname} ESMTP mailpipe")

    def proxy_header_read(self) -> bool:
        """A listed balancer's header was valid: count the connection under its
        client; False (a 421 queued) when that client is over its limit."""
        self._awaiting_proxy_header = False
        client_ip = self.client_ip
        refusal = self.context.limits.identify(client_ip)
        if refusal is not None:
            self.reply(f"421 4.7.0 {self.hostname} {refusal}")
            return False
        self._counted_ip = client_ip
        return True

    def data_received(self, data: bytes) -> None:
        self._bytes_received += len(data)
        super().data_received(data)

    def on_client_closed(self) -> None:
        self._client_closed = True

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._refused:
            return
        if self._awaiting_proxy_header:
            self.cancel_step()
            self._log_missing_proxy_header()
        if self._admitted and self in self.context.sessions:
            self.context.limits.release(self._counted_ip)
        self.context.sessions.discard(self)
        if self._receiver is not None and self.in_data:
            # Gone in the middle of DATA: nothing was acknowledged, the sender
            # retries; the partial spool files go now.
            self._receiver.abort()
            self._receiver = None
            self.in_data = False

    def _log_missing_proxy_header(self) -> None:
        """Why a listed balancer's connection ended before its PROXY header was
        accepted: one rate-limited warning per balancer and cause."""
        parsed = self.proxy_data
        if parsed is not None and getattr(parsed, "error", ""):
            kind, cause = "invalid", f"its PROXY header is invalid ({getattr(parsed, 'error')})"
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

    def on_idle_timeout(self) -> None:
        if not self._awaiting_proxy_header:
            self.reply(f"421 4.4.2 {self.hostname} no command for {self.idle_timeout:g} seconds; closing")

    @property
    def client_ip(self) -> str:
        """The SMTP client: a trusted PROXY header's source, else the TCP peer."""
        return self.proxied_ip or self.peer_ip

    @property
    def balancer_ip(self) -> str | None:
        """The load balancer the client came through; None for a direct client."""
        return self.peer_ip if self.proxied_ip else None

    # --- command lines -----------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        if not line:
            self.reply("500 5.5.2 Error: bad syntax")
            return
        verb_bytes, _, argument = line.partition(b" ")
        try:
            verb = verb_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            self.reply("500 5.5.2 Error: bad syntax")
            return
        limit = PATH_COMMAND_LINE_LIMIT if self.extended_smtp and verb in ("MAIL", "RCPT") else COMMAND_LINE_LIMIT
        if len(line) > limit:
            self.reply("500 5.5.2 Command line too long")
            return
        if self.context.settings.require_tls and self.context.tls_context is not None and not self.uses_tls \
                and verb not in ALLOWED_BEFORE_STARTTLS:
            self.reply("530 5.7.0 Must issue a STARTTLS command first")
            return
        command = _COMMANDS.get(verb)
        if command is None:
            self._unknown_commands += 1
            if self._unknown_commands >= UNKNOWN_COMMAND_LIMIT:
                self.reply("502 5.5.1 Too many unrecognized commands, goodbye.")
                self.close()
                return
            self.reply(f'500 5.5.2 Error: command "{verb}" not recognized')
            return
        self.touch()
        command(self, surrogate_text(argument.strip()) if argument else "")

    def _needs_helo(self) -> bool:
        if not self.helo:
            self.reply("503 5.5.1 send EHLO (or HELO) first")
            return True
        return False

    def reset_transaction(self) -> None:
        """Forget sender and recipients (RSET, EHLO, HELO, the end of DATA)."""
        self.transaction = Transaction()

    # --- commands ------------------------------------------------------------

    def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            self.reply("501 5.5.4 Syntax: EHLO hostname")
            return
        self.reset_transaction()
        self.extended_smtp = True
        self.helo = hostname
        lines = [self.hostname, f"SIZE {self.max_message_size}", "8BITMIME", "SMTPUTF8", "PIPELINING",
                 "ENHANCEDSTATUSCODES"]
        if self.context.tls_context and not self.uses_tls:
            lines.append("STARTTLS")
        lines.append("HELP")
        self.reply("\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}")

    def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            self.reply("501 5.5.4 Syntax: HELO hostname")
            return
        self.reset_transaction()
        self.extended_smtp = False
        self.helo = hostname
        self.reply(f"250 {self.hostname}")

    def smtp_AUTH(self, arg: str) -> None:
        self.reply("502 5.5.1 AUTH is not offered here")

    def smtp_NOOP(self, arg: str) -> None:
        self.reply("250 2.0.0 OK")

    def smtp_RSET(self, arg: str) -> None:
        if arg:
            self.reply("501 5.5.4 Syntax: RSET")
            return
        self.reset_transaction()
        self.reply("250 2.0.0 OK")

    def smtp_QUIT(self, arg: str) -> None:
        if arg:
            self.reply("501 5.5.4 Syntax: QUIT")
            return
        self.reply("221 2.0.0 Bye")
        self.close()

    def smtp_HELP(self, arg: str) -> None:
        available = sorted(verb for verb in _HELP if verb != "STARTTLS" or self.context.tls_context)
        if arg:
            verb = arg.upper()
            if verb in available:
                self.reply(f"250 Syntax: {_HELP[verb]}")
                return
        self.reply(f"{501 if arg else 250} Supported commands: {' '.join(available)}")

    def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            self.reply("501 5.5.4 Syntax: VRFY <address>")
        elif self._parse_path(arg)[0] is None:
            self.reply(f"502 5.5.4 Could not VRFY {arg}")
        else:
            self.reply("252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, arg: str) -> None:
        self.reply("502 5.5.1 EXPN not implemented")

    def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            self.reply("501 5.5.4 Syntax: STARTTLS")
            return
        tls_context = self.context.tls_context
        if tls_context is None:
            self.reply("454 4.7.0 TLS not available")
            return
        if self.uses_tls:
            self.reply("503 5.5.1 TLS is already active")
            return
        self.prepare_tls()
        self.reply("220 2.0.0 Ready to start TLS")
        self.start_step(lambda: self._start_tls(tls_context))

    async def _start_tls(self, tls_context: ssl.SSLContext) -> None:
        if await self.start_tls(tls_context):
            # RFC 3207 4.2: a new session; the client behind a balancer stays.
            self.uses_tls = True
            self.helo = ""
            self.extended_smtp = False
            self.reset_transaction()
            self.touch()

    def smtp_MAIL(self, arg: str) -> None:
        if self._needs_helo():
            return
        rest = _strip_keyword("FROM:", arg)
        if rest is None:
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]")
            return
        address, parameters = self._parse_path(rest)
        if address is None:
            self.reply("553 5.1.7 malformed sender address")
            return
        if self.transaction.mail_from is not None:
            self.reply("503 5.5.1 nested MAIL command; send RSET first")
            return
        problem = self._check_mail_parameters(parameters)
        if problem:
            self.reply(problem)
            return
        self.transaction.mail_from = address
        self.reply("250 2.1.0 OK")

    def _check_mail_parameters(self, text: str) -> str | None:
        if text.strip() and not self.extended_smtp:
            return "501 5.5.4 MAIL parameters need EHLO, not HELO"
        for parameter in text.split():
            key, _, value = parameter.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit():
                    return "501 5.5.4 SIZE needs a number of bytes"
                if self.max_message_size and int(value) > self.max_message_size:
                    return f"552 5.3.4 message size exceeds the limit of {self.max_message_size} bytes"
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return "501 5.5.4 BODY must be 7BIT or 8BITMIME"
            elif key == "SMTPUTF8":
                if value:
                    return "501 5.5.4 SMTPUTF8 takes no value"
            else:
                return f"555 5.5.4 MAIL parameter {key} is not supported"
        return None

    def smtp_RCPT(self, arg: str) -> None:
        if self._needs_helo():
            return
        transaction = self.transaction
        if transaction.mail_from is None:
            self.reply("503 5.5.1 need MAIL command first")
            return
        rest = _strip_keyword("TO:", arg)
        address, parameters = self._parse_path(rest) if rest is not None else (None, "")
        if not address:
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if parameters.strip():
            self.reply("555 5.5.4 RCPT parameters are not supported")
            return
        if len(transaction.rcpt_tos) >= MAX_RECIPIENTS:
            self.reply(f"452 4.5.3 too many recipients; at most {MAX_RECIPIENTS} per message")
            return
        envelope = Envelope(peer_ip=self.peer_ip, helo=self.helo, mail_from=transaction.mail_from,
                            rcpt_to=address, proxied_ip=self.proxied_ip)
        routed = self.context.router.route(envelope)
        if isinstance(routed, Routed):
            self._add_recipient(transaction, envelope, routed)
        else:  # an ``async def`` accept: answered when it has decided
            self.start_step(lambda: self._route_later(transaction, envelope, routed))

    async def _route_later(self, transaction: Transaction, envelope: Envelope, routing: Awaitable[Routed]) -> None:
        self._add_recipient(transaction, envelope, await routing)

    def _add_recipient(self, transaction: Transaction, envelope: Envelope, routed: Routed) -> None:
        address = envelope.rcpt_to
        if routed.connection is None:
            METRICS.recipients_refused.labels(routed.refusal_reason or "refused", routed.reply[:1] + "xx").inc()
            log.info(
                "recipient refused",
                extra={"rcpt_to": address, "peer_ip": envelope.client_ip, "balancer_ip": self.balancer_ip,
                       "reason": routed.refusal_reason, "reply": routed.reply},
            )
        else:
            route = transaction.routes.get(routed.connection.id)
            if route is None:
                route = transaction.routes[routed.connection.id] = Route(routed.connection, arrival=routed.arrival)
            if address not in route.recipients:
                route.recipients.append(address)
            transaction.rcpt_tos.append(address)
        self.reply(routed.reply)

    def smtp_DATA(self, arg: str) -> None:
        if self._needs_helo():
            return
        if arg:
            self.reply("501 5.5.4 Syntax: DATA")
            return
        if self.transaction.mail_from is None:
            self.reply("503 5.5.1 need MAIL command first")
            return
        if not self.transaction.routes:
            self.reply("554 5.5.1 no valid recipients")
            return
        receiver = MessageReceiver.open_ready(self.context.committer, *self._receiver_arguments())
        if receiver is None:  # the spool is short of room, or its files could not be made
            self.start_step(self._open_data)
        else:
            self._begin_data(receiver)

    async def _open_data(self) -> None:
        try:
            receiver = await MessageReceiver.open(self.context.committer, *self._receiver_arguments())
        except OSError as error:
            if not storage_full(error):  # disk full is logged by the spool, rate-limited
                log.error("could not create spool files for a message", extra={"error": str(error)})
            self.reset_transaction()
            self.reply(storage_reply(error))
            return
        if self.closed:
            receiver.abort()
            return
        self._begin_data(receiver)

    def _receiver_arguments(self) -> tuple[list[Route], SmtpConfig, SessionFacts]:
        transaction = self.transaction
        assert transaction.mail_from is not None
        facts = SessionFacts(peer_ip=self.client_ip, balancer_ip=self.balancer_ip, helo=self.helo,
                             mail_from=transaction.mail_from, tls=self.uses_tls)
        return list(transaction.routes.values()), self.context.settings, facts

    def _begin_data(self, receiver: MessageReceiver) -> None:
        self._receiver = receiver
        self._scanner = DataScanner(receiver.feed)
        self.in_data = True
        self.reply("354 End data with <CR><LF>.<CR><LF>")

    def handle_data_text(self, data: bytes) -> int | None:
        assert self._scanner is not None
        used = self._scanner.feed(data)
        if used is not None:
            self.in_data = False
            self.start_step(self._finish_data)
        return used

    async def _finish_data(self) -> None:
        receiver, self._receiver, self._scanner = self._receiver, None, None
        assert receiver is not None
        try:
            reply = await receiver.finish()
        finally:
            receiver.abort()  # what was not committed
            self.reset_transaction()
        self.reply(reply)

    # --- helpers -------------------------------------------------------------

    def _parse_path(self, text: str) -> tuple[str | None, str]:
        """``(address, parameters)``; address ``""`` is the null path ``<>``,
        ``None`` means unparseable."""
        text = text.lstrip()
        match = _SIMPLE_PATH.match(text)
        if match:
            return match.group(1), match.group(2)
        return _parse_unusual_path(text)


#: The commands, by verb (a class-level table: nothing to build per connection).
_COMMANDS: dict[str, Callable[[MailpipeSMTP, str], None]] = {
    verb: getattr(MailpipeSMTP, f"smtp_{verb}")
    for verb in ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN",
                 "STARTTLS", "AUTH")
}


def _strip_keyword(keyword: str, arg: str) -> str | None:
    """``"FROM:<a@b> SIZE=1"`` → ``"<a@b> SIZE=1"`` for ``FROM:`` (any case);
    None when the argument does not start with it."""
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword):].strip()
    return None


def _parse_unusual_path(text: str) -> tuple[str | None, str]:
    """Source routes, quoted local parts, addresses without brackets: the
    stdlib's RFC 5322 parser (what aiosmtpd uses too)."""
    if not text:
        return "", ""
    try:
        if text.startswith("<"):
            address, rest = get_angle_addr(text)
        else:
            address, rest = get_addr_spec(text)
    except (HeaderParseError, IndexError, ValueError):
        return None, ""
    found = address.addr_spec
    if found == "<>":
        found = ""
    return found, rest or ""
