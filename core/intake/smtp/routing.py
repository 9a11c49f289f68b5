"""RCPT TO → connection → its connection type's ``accept`` → SMTP reply.

Every recipient is one connection's unique journal address or nothing:
there is no relaying. The lookup is in the server's in-memory
:class:`~mailpipe.connections.directory.ConnectionDirectory` (kept current by the server's
store watcher), so routing costs no database access per message.

Replies (Haraka style: a plugin's DENY is a 5xx, DENYSOFT a 4xx):

==============================================  ==========================
unknown or deleted journal address              ``550 5.1.1``
address on a domain that is not ours (relay)    ``550 5.7.1``
disabled connection                             ``451 4.7.1`` (default) or
                                                ``550 5.7.1`` with
                                                ``disabled_reply = "reject"``
plugin refusal                                  the plugin's code and text
connection type not installed / accept failed   ``451 4.3.5`` / ``451 4.3.0``
accepted                                        ``250 2.1.5``
==============================================  ==========================
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Awaitable, Protocol

from mailpipe.config import SmtpConfig
from mailpipe.plugin_host import PluginHost
from mailpipe.types import Connection, Decision, Envelope, Verdict

log = logging.getLogger("mailpipe.smtp")

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\s")
_DEFAULT_ENHANCED = {Verdict.DENY: "5.7.1", Verdict.DENYSOFT: "4.7.1", Verdict.ACCEPT: "2.1.5"}


class Directory(Protocol):
    """What the router needs of the server's ConnectionDirectory."""

    by_address: dict[str, Connection]

    def for_address(self, address: str) -> Connection | None: ...


@dataclass(frozen=True)
class Routed:
    """The answer for one RCPT TO: the reply line, and the connection when accepted."""

    reply: str
    connection: Connection | None = None
    refusal_reason: str = ""
    #: the metadata the accepted recipient's message starts with (PluginHost.arrival)
    arrival: dict[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.connection is not None


class Router:
    def __init__(self, directory: Directory, host: PluginHost, settings: SmtpConfig) -> None:
        self.directory = directory
        self.host = host
        self.settings = settings

    def route(self, envelope: Envelope) -> "Routed | Awaitable[Routed]":
        """The answer for one RCPT TO: at once when the connection type's
        ``accept`` is a plain function (both built-in types), else an
        awaitable of it (an ``async def`` accept)."""
        connection = self.directory.for_address(envelope.rcpt_to)
        # Replies quote the address; a NUL or an escape sequence in it must not
        # reach the sender's logs or terminal as is.
        address = printable(envelope.rcpt_to)
        if connection is None:
            return self._unknown(address)
        connection_type = self.host.connection_types.get(connection.type)
        if connection_type is None or connection_type.receives != "smtp":
            return Routed(
                f"451 4.3.5 <{address}>: connection type {connection.type!r} is not installed here; "
                "try again later",
                refusal_reason="type-missing",
            )
        try:
            answer = self.host.accept_answer(connection, envelope)
        except Exception as error:  # a broken plugin must not lose mail: the sender retries
            return self._failed(connection, error)
        if inspect.isawaitable(answer):
            return self._decided_later(connection, address, answer)
        return self._decided(connection, address, answer)

    async def _decided_later(self, connection: Connection, address: str, answer: Awaitable[object]) -> Routed:
        try:
            decision = await answer
        except Exception as error:
            return self._failed(connection, error)
        return self._decided(connection, address, decision)

    def _failed(self, connection: Connection, error: Exception) -> Routed:
        log.error(
            "accept failed; replying with a temporary error",
            extra={"connection": connection.id, "type": connection.type, "error": repr(error)},
        )
        return Routed("451 4.3.0 temporary error deciding on this recipient; try again later",
                      refusal_reason="hook-failed")

    def _decided(self, connection: Connection, address: str, answer: object) -> Routed:
        decision = answer if isinstance(answer, Decision) else None
        if decision is None:
            return Routed(
                f"451 4.3.5 <{address}>: no installed plugin decides for connection type "
                f"{connection.type!r}; try again later",
                refusal_reason="no-decision",
            )
        if decision.verdict is Verdict.ACCEPT:
            return Routed("250 2.1.5 OK", connection, arrival=self.host.arrival(connection))
        refusal = decision
        if refusal.reason == "disabled" and self.settings.disabled_reply == "reject":
            return Routed(
                f"550 5.7.1 <{address}>: this journaling connection is disabled",
                refusal_reason="disabled",
            )
        return Routed(reply_line(refusal), refusal_reason=refusal.reason or refusal.verdict.value)

    def _unknown(self, address: str) -> Routed:
        domain = address.rpartition("@")[2].lower()
        if domain in self._our_domains():
            return Routed(f"550 5.1.1 <{address}>: no such journaling address", refusal_reason="unknown")
        return Routed(
            f"550 5.7.1 <{address}>: relaying denied; this server accepts mail only for its "
            "journaling addresses",
            refusal_reason="relay",
        )

    def _our_domains(self) -> set[str]:
        domains = {self.settings.journal_domain.lower()}
        domains.update(address.rpartition("@")[2] for address in self.directory.by_address)
        return domains


def reply_line(decision: Decision) -> str:
    """One SMTP reply line from a plugin's decision: the code class follows the
    verdict whatever code the plugin chose, and an enhanced status code is
    added when the text has none."""
    code = decision.code
    if decision.verdict is Verdict.DENY and not 500 <= code <= 559:
        code = 550
    elif decision.verdict is Verdict.DENYSOFT and not 400 <= code <= 459:
        code = 451
    text = printable(" ".join((decision.message or "").split())) or "refused"
    if not _ENHANCED.match(text + " "):
        text = f"{_DEFAULT_ENHANCED[decision.verdict]} {text}"
    return f"{code} {text}"


def printable(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) written as ``\\xNN``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)
