"""One SMTP transaction's message on its way into the spool.

Each connection among the recipients gets its own spooled copy (the
filesystem sink keeps one archive per connection anyway): the bytes are
written to one spool file per connection as they arrive, so nothing is
held in memory, and every copy is committed (fsynced) before the client
hears ``250``. Almost every journaling transaction has one recipient, so
this costs nothing in the common case; a transaction that names several
connections costs one more write per extra connection.

The reply carries the *queue id*: the spool id of the first copy. Every
copy records it as ``smtp.queue_id`` (and its own ``spool_id``), so the
sender's log line "queued as ..." finds all of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import anyio

from mailpipe.config import SmtpConfig
from mailpipe.spool.disk_space import storage_full
from mailpipe.connections.metrics import count_reply
from mailpipe.intake.smtp.data import RFC_LINE_LIMIT, DataChecks, DotUnstuffer
from mailpipe.spool.group_commit import GroupCommitter, StagedMessage
from mailpipe.spool.queue import SpooledMessage
from mailpipe.types import Connection

log = logging.getLogger("mailpipe.smtp")

#: ``commit(staged, **extra_metadata)``: returns once the message is durable
#: (``GroupCommitter.commit``).
Commit = Callable[..., Awaitable[SpooledMessage]]


@dataclass
class Route:
    """The recipients of one transaction that belong to one connection."""

    connection: Connection
    recipients: list[str] = field(default_factory=list)
    #: what the message's metadata starts with (PluginHost.arrival, via the router)
    arrival: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionFacts:
    #: the SMTP client (behind a load balancer: the address in its PROXY header)
    peer_ip: str
    #: the load balancer the client came through; None for a direct client
    balancer_ip: str | None
    helo: str
    mail_from: str
    tls: bool


class MessageReceiver:
    """Streams one transaction's DATA into one spool writer per connection.

    Build it with :meth:`open`: the files come from the committer's pool,
    created ahead, 32 at a time (GroupCommitter.take).
    """

    def __init__(
        self,
        writers: list[StagedMessage],
        commit: Commit,
        routes: list[Route],
        settings: SmtpConfig,
        facts: SessionFacts,
    ) -> None:
        self.writers = writers
        self.commit = commit
        self.routes = routes
        self.settings = settings
        self.facts = facts
        self.unstuffer = DotUnstuffer()
        self.checks = DataChecks()
        self.refusal: str | None = None

    @classmethod
    async def open(
        cls, committer: GroupCommitter, routes: list[Route], settings: SmtpConfig, facts: SessionFacts
    ) -> "MessageReceiver":
        writers: list[StagedMessage] = []
        try:
            for route in routes:
                writers.append(
                    await committer.take(dict(route.arrival))
                )
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        return cls(writers, committer.commit, routes, settings, facts)

    @classmethod
    def open_ready(
        cls, committer: GroupCommitter, routes: list[Route], settings: SmtpConfig, facts: SessionFacts
    ) -> "MessageReceiver | None":
        """:meth:`open` without waiting, when the committer can hand out a
        staged message for every route (the usual case); None means "call
        open" (which refuses, or fails, and says why)."""
        writers: list[StagedMessage] = []
        for route in routes:
            staged = committer.take_ready(dict(route.arrival))
            if staged is None:
                for writer in writers:
                    writer.abort()
                return None
            writers.append(staged)
        return cls(writers, committer.commit, routes, settings, facts)

    # --- while DATA arrives ----------------------------------------------------

    def feed(self, raw: bytes) -> None:
        if self.refusal is not None:
            return  # keep reading to the end mark, store nothing
        self._take(self.unstuffer.feed(raw))

    def _take(self, data: bytes) -> None:
        if not data:
            return
        checks = self.checks
        checks.observe(data)
        settings = self.settings
        if settings.max_message_size and checks.size > settings.max_message_size:
            self._refuse(f"552 5.3.4 message size exceeds the limit of {settings.max_message_size} bytes")
        elif checks.bare_lf and settings.bare_lf == "reject":
            self._refuse(
                "550 5.6.0 message has a bare LF line ending; send CRLF line endings (RFC 5321 2.3.8)"
            )
        elif settings.max_line_length and checks.longest_line > settings.max_line_length:
            self._refuse(
                f"500 5.5.2 line too long: the limit is {settings.max_line_length} octets "
                "(RFC 5321 4.5.3.1.6)"
            )
        else:
            try:
                for writer in self.writers:
                    writer.write(data)
            except OSError as error:
                # Keep reading to the end mark: replying now would make the
                # rest of the message be read as commands.
                if storage_full(error):
                    self.writers[0].writer.spool.space.note_failure(error)  # logs, rate-limited
                else:
                    log.error("could not write a message to the spool", extra={"error": str(error)})
                self._refuse(storage_reply(error))

    def _refuse(self, reply: str) -> None:
        self.refusal = reply
        self.abort()  # free the disk now, not after the rest arrives

    # --- at the end mark --------------------------------------------------------

    async def finish(self) -> str:
        """Commit every copy; the reply line for the client."""
        reply = await self._finish()
        count_reply([route.connection.id for route in self.routes], reply)
        return reply

    async def _finish(self) -> str:
        if self.refusal is None:
            self._take(self.unstuffer.flush())
        if self.refusal is not None:
            log.info(
                "message refused",
                extra={"peer_ip": self.facts.peer_ip, "reply": self.refusal, "size_so_far": self.checks.size},
            )
            return self.refusal
        queue_id = self.writers[0].id
        notes = self._notes()
        try:
            # Shielded: once committing started it finishes even if the client
            # goes away (it then retries and the sink's dedup absorbs the copy).
            with anyio.CancelScope(shield=True):
                commits = [
                    self.commit(writer, smtp=self._smtp_facts(route, queue_id), **({"notes": notes} if notes else {}))
                    for writer, route in zip(self.writers, self.routes)
                ]
                if len(commits) == 1:
                    await commits[0]
                else:
                    await asyncio.gather(*commits, return_exceptions=False)
        except Exception as error:
            if not storage_full(error):  # disk full is logged by the spool, rate-limited
                log.error(
                    "could not make a message durable; the client was told to retry",
                    extra={"queue_id": queue_id, "error": f"{type(error).__name__}: {error}"},
                )
            return storage_reply(error)
        log.info(
            "message queued",
            extra={
                "queue_id": queue_id,
                "connections": [route.connection.id for route in self.routes],
                "size": self.checks.size,
                "peer_ip": self.facts.peer_ip,
            },
        )
        return f"250 2.0.0 OK: queued as {queue_id}"

    def abort(self) -> None:
        """Drop every copy not yet committed (refused, or the client went away)."""
        for writer in self.writers:
            writer.abort()

    def _smtp_facts(self, route: Route, queue_id: str) -> dict[str, Any]:
        facts = self.facts
        return {
            "peer_ip": facts.peer_ip,
            "balancer_ip": facts.balancer_ip,
            "helo": _printable(facts.helo),
            "mail_from": _printable(facts.mail_from),
            "rcpt_to": [_printable(r) for r in route.recipients],
            "queue_id": queue_id,
            "tls": facts.tls,
        }

    def _notes(self) -> list[str]:
        notes = []
        if self.checks.bare_lf:
            notes.append("the message has bare LF line endings; archived as received")
        if self.checks.nul:
            notes.append("the message contains NUL bytes; archived as received")
        if self.checks.longest_line > RFC_LINE_LIMIT:
            notes.append(
                f"the longest line has {self.checks.longest_line} octets, over RFC 5322's "
                f"{RFC_LINE_LIMIT}; archived as received"
            )
        return notes


def storage_reply(error: BaseException) -> str:
    """A temporary refusal for a spool that cannot take the message now; the
    words are for the sender's log, so they name no file, errno or path."""
    if storage_full(error):
        return "452 4.3.1 insufficient system storage; try again later"
    return "451 4.3.0 could not store the message durably; try again later"


def _printable(text: str) -> str:
    """Envelope text for JSON: aiosmtpd decodes non-UTF-8 bytes as surrogates,
    which JSON cannot carry; show them as \\x escapes instead."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
