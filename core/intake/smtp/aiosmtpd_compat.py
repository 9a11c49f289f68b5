"""Every use of aiosmtpd's internals, in one place (tested against aiosmtpd 1.4.6).

mailpipe's SMTP session (protocol.py) is aiosmtpd's ``SMTP`` protocol with
its own EHLO, MAIL, RCPT and DATA. Those commands need a few things
aiosmtpd keeps private: the stream the commands are read from, its
transaction-state resets, its address parser, its idle timer, whether
STARTTLS happened, and the factories for the session and envelope
objects. :class:`SMTPBase` gives each a public name of mailpipe's own;
nothing else in mailpipe touches a private name of aiosmtpd.

``RELIES_ON`` lists each name and signature used here;
``tests/core/intake/test_aiosmtpd_compat.py`` checks them against the installed
aiosmtpd and checks that this module uses no private name missing from the
table. pyproject.toml pins aiosmtpd to the releases that test covers
(before 1.4.6, aiosmtpd did not enforce ``require_starttls``).

Why each one:

- ``_reader``: DATA is streamed from the same reader the command loop
  reads, in pieces of at most ``PIECE_LIMIT`` bytes, so a 150 MB message
  costs a few hundred kilobytes of memory (aiosmtpd's own DATA collects
  the whole message in a list), and pipelined commands after the data stay
  in the reader for the command loop (see data.py).
- ``_reset_timeout``: re-armed for every piece received in DATA, so a
  sender that keeps sending is never idle, however slowly its bytes arrive.
- ``_set_rset_state`` / ``_set_post_data_state``: EHLO resets the
  transaction (RFC 5321 4.1.4) and a finished or failed DATA starts a new
  one, exactly as aiosmtpd's own commands do.
- ``_getaddr`` / ``_strip_command_keyword``: aiosmtpd's full RFC 5321 path
  parser for the unusual addresses (source routes, quoted local parts) that
  mailpipe's fast path leaves to it, and its ``FROM:``/``TO:`` split.
- ``_tls_protocol``: whether this connection has done STARTTLS (the EHLO
  offer, the TLS flag recorded with each message).
- ``_create_session`` / ``_create_envelope``: the only way to give a
  session mailpipe's fields (the PROXY source, the routed recipients).
- ``command_size_limits``: aiosmtpd keeps this table on the class, shared
  by every session, and grows it on every EHLO; each session gets its own.
- ``_proxy_timeout``: aiosmtpd reads a PROXY header (with its own v1/v2
  parser) on every connection of a server made with
  ``proxy_protocol_timeout``, whoever the peer is. mailpipe must read one
  only from the listed load balancers (``[smtp] proxy_protocol_from``), and
  the peer is known only once the connection is made, so the setting is
  switched on per connection, before aiosmtpd's client handler starts.
  ``Session.proxy_data`` then holds the parsed header, or the parser's
  reason for refusing it.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailpipe.common.reliance import Reliance


class SMTPBase(SMTP):
    """aiosmtpd's ``SMTP`` with its internals under mailpipe's names."""

    def __init__(self, handler: Any, **options: Any) -> None:
        super().__init__(handler, **options)
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)

    # Factories: subclasses override these, not aiosmtpd's private ones.

    def create_session(self) -> Session:
        return Session(self.loop)

    def create_transaction(self) -> Envelope:
        return Envelope()

    def _create_session(self) -> Session:
        return self.create_session()

    def _create_envelope(self) -> Envelope:
        return self.create_transaction()

    def expect_proxy_header(self, timeout: float) -> None:
        """This connection must start with a PROXY header, within ``timeout``
        seconds; call before ``connection_made`` hands over to aiosmtpd."""
        self._proxy_timeout = timeout

    @property
    def command_reader(self) -> asyncio.StreamReader:
        """The stream the commands (and the DATA text) are read from."""
        return self._reader

    @property
    def uses_tls(self) -> bool:
        """True once STARTTLS has succeeded on this connection."""
        return self._tls_protocol is not None

    def reset_transaction(self) -> None:
        """Forget sender, recipients and data (what RSET and EHLO do)."""
        self._set_rset_state()

    def end_transaction(self) -> None:
        """Start a new transaction after DATA, whatever its outcome."""
        self._set_post_data_state()

    def reset_idle_timer(self) -> None:
        """The client did something: restart the inactivity timeout."""
        self._reset_timeout()

    def strip_keyword(self, keyword: str, arg: str) -> str | None:
        """``"FROM:<a@b> SIZE=1"`` → ``"<a@b> SIZE=1"`` for keyword ``FROM:``
        (case-insensitive); None when the argument does not start with it."""
        return self._strip_command_keyword(keyword, arg)

    def parse_address(self, text: str) -> tuple[str | None, str | None]:
        """aiosmtpd's RFC 5321 path parser: ``(address, rest)``; address None
        when unparseable."""
        return self._getaddr(text)


#: The releases the checks of ``RELIES_ON`` were run against; pyproject.toml
#: lists exactly this requirement (the test checks that too).
REQUIREMENT = "aiosmtpd>=1.4.6,<1.5"

RELIES_ON: tuple[Reliance, ...] = (
    Reliance(SMTP, "__init__", "SMTPBase passes every option through; no option it takes may vanish",
             ("self", "handler", "data_size_limit", "enable_SMTPUTF8", "decode_data", "hostname", "ident",
              "tls_context", "require_starttls", "timeout", "auth_required", "auth_require_tls",
              "auth_exclude_mechanism", "auth_callback", "command_call_limit", "authenticator",
              "proxy_protocol_timeout", "loop")),
    Reliance(SMTP, "command_size_limits", "a class-level table grown on every EHLO: replaced per session"),
    Reliance(SMTP, "command_size_limit", "the default size of a command line"),
    Reliance(SMTP, "line_length_limit", "sizes the StreamReader: the largest DATA piece read at once"),
    Reliance(Session, "__init__", "the default session factory", ("self", "loop")),
    Reliance(Envelope, "__init__", "the default transaction factory", ("self",)),
    Reliance(SMTP, "_create_session", "the session factory aiosmtpd calls per connection",
             ("self",), override=SMTPBase),
    Reliance(SMTP, "_create_envelope", "the envelope factory aiosmtpd calls per transaction",
             ("self",), override=SMTPBase),
    Reliance(SMTP, "_reader", "the command stream, from which DATA is streamed", set_in="_cb_client_connected"),
    Reliance(SMTP, "_proxy_timeout", "read before the greeting: wait for a PROXY header", set_in="__init__"),
    Reliance(Session, "proxy_data", "the parsed PROXY header, or the parser's error", set_in="__init__"),
    Reliance(SMTP, "_tls_protocol", "set once STARTTLS succeeded", set_in="__init__"),
    Reliance(SMTP, "_set_rset_state", "resets the transaction (EHLO)", ("self",)),
    Reliance(SMTP, "_set_post_data_state", "starts a new transaction after DATA", ("self",)),
    Reliance(SMTP, "_reset_timeout", "re-arms the idle timeout during DATA", ("self", "duration")),
    Reliance(SMTP, "_strip_command_keyword", "splits FROM:/TO: from the path", ("self", "keyword", "arg")),
    Reliance(SMTP, "_getaddr", "aiosmtpd's full RFC 5321 path parser", ("self", "arg")),
    # Overridden by protocol.py's MailpipeSMTP: public, but their signatures matter.
    Reliance(SMTP, "check_helo_needed", "overridden with ENHANCEDSTATUSCODES replies", ("self", "helo")),
    Reliance(SMTP, "smtp_EHLO", "replaced: mailpipe's extensions", ("self", "hostname")),
    Reliance(SMTP, "smtp_MAIL", "replaced: SIZE/BODY/SMTPUTF8 checks", ("self", "arg")),
    Reliance(SMTP, "smtp_RCPT", "replaced: routing", ("self", "arg")),
    Reliance(SMTP, "smtp_DATA", "replaced: streamed into the spool", ("self", "arg")),
    Reliance(SMTP, "smtp_AUTH", "replaced: AUTH is not offered", ("self", "arg")),
)
