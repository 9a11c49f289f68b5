"""A guarded IMAP session over aioimaplib: implicit TLS, bounded waits.

aioimaplib speaks the protocol; this module adds what a collector that runs
for months needs and the library leaves out:

- a lost connection (``BYE``, a reset, a killed server) fails the pending
  command at once, instead of leaving it to its timeout or — for IDLE, and
  for UID STORE/COPY/MOVE/EXPUNGE, which aioimaplib does not time out —
  waiting forever;
- user and mailbox names are quoted, mailbox names encoded in modified UTF-7;
- ``UID FETCH`` answers are parsed into ``uid → bytes`` whatever order the
  server puts the items in, and large FETCH answers are parsed in linear
  time (see ``aioimaplib_compat.LinearFetchCommand``);
- every failure is an ``ImapError`` whose text an operator can act on.

aioimaplib's internals (its response reader, FETCH completeness check and
timer, the XOAUTH2 continuation) are replaced in ``aioimaplib_compat``, the
one module that touches them; this module uses aioimaplib's public API and
that module's classes only. A read of thousands of responses is handled in
a loop there, without recursion.

Memory: aioimaplib collects a literal (a message body) into one
``bytearray`` and hands that same object back; nothing here copies it.
Messages above ``LARGE_MESSAGE_BYTES`` are fetched in partial ranges
(``BODY.PEEK[]<offset.length>``), so a 200 MB message costs one range of
memory, not 200 MB.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Iterable, TypeVar

import aioimaplib

from mailpipe.plugins.imap.aioimaplib_compat import ImapClient, LinearFetchCommand
from mailpipe.plugins.imap.oauth import TokenRequestFailed, describe_imap_refusal, token_source
from mailpipe.plugins.imap.settings import ImapSettings

T = TypeVar("T")

#: Messages larger than this are streamed in ranges of ``FETCH_RANGE_BYTES``.
LARGE_MESSAGE_BYTES = 8 * 1024 * 1024
FETCH_RANGE_BYTES = 4 * 1024 * 1024

_FETCH_START = re.compile(rb"^(\d+) FETCH \(")
_UID_ITEM = re.compile(rb"[( ]UID (\d+)")
_SIZE_ITEM = re.compile(rb"RFC822\.SIZE (\d+)")
_EMPTY_BODY = re.compile(rb'BODY\[\](<\d+>)? ("")')
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_PLAIN_GREETING = (b"* OK", b"* PREAUTH", b"* BYE")
#: OpenSSL's reasons when the peer's first bytes are not a TLS record: a
#: plain-text protocol (an SMTP or POP3 banner, an HTTP error page) answered.
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)

# --- errors -----------------------------------------------------------------------


class ImapError(Exception):
    """A failure with a message for the operator (never containing the password)."""


class ConnectFailed(ImapError):
    """The server could not be reached, or TLS could not be set up."""


class AuthenticationFailed(ImapError):
    pass


class TokenUnavailable(AuthenticationFailed):
    """auth=oauth2: Entra ID gave no token (the text names the AADSTS cause)."""


class MailboxNotFound(ImapError):
    pass


class ConnectionLost(ImapError):
    pass


class CommandFailed(ImapError):
    pass


class CommandTimedOut(ImapError):
    pass


class IdleRefused(CommandFailed):
    """The server advertised IDLE but refused it: poll instead."""


class _Lost(Exception):
    """Internal: the connection closed while a call was pending."""


# --- small helpers ------------------------------------------------------------------


def tls_context(settings: ImapSettings) -> ssl.SSLContext:
    """Certificate and host name checked against the system CAs, or ``ca_file``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` → ``"1:3,7,9:10"``: short commands for long runs."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set cannot be sent to the server")
    ranges: list[str] = []
    start = previous = ordered[0]
    for uid in ordered[1:]:
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(f"{start}:{previous}" if previous != start else str(start))
        start = previous = uid
    ranges.append(f"{start}:{previous}" if previous != start else str(start))
    return ",".join(ranges)


def encode_mailbox_name(name: str) -> str:
    """RFC 3501 section 5.1.3 "modified UTF-7", then quoted: mailbox names
    with spaces or non-ASCII letters ("Éléments envoyés") reach the server intact."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return aioimaplib.quoted("".join(out))


def _server_text(response: Any) -> str:
    """The human part of a tagged answer, e.g. ``[AUTHENTICATIONFAILED] Authentication failed.``"""
    lines = [line for line in response.lines if isinstance(line, (bytes, bytearray))]
    text = bytes(lines[-1]) if lines else b""
    return text.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class MailboxStatus:
    uidvalidity: int
    uidnext: int | None
    exists: int


@dataclass
class FetchItem:
    uid: int
    size: int | None
    body: bytes | bytearray | None


def parse_fetch(lines: list[Any]) -> list[FetchItem]:
    """FETCH answers → items. A literal (``bytearray``) belongs to the
    FETCH it follows; text lines after it continue that FETCH (servers may
    put ``UID`` before or after the body). Unsolicited FETCHes (flag changes
    by another client) come out as items without a body."""
    items: list[tuple[list[bytes], list[bytearray]]] = []
    for line in lines[:-1]:  # the last line is the tagged completion text
        if isinstance(line, bytearray):
            if items:
                items[-1][1].append(line)
            continue
        if _FETCH_START.match(line):
            items.append(([line], []))
        elif items:
            items[-1][0].append(line)
    parsed = []
    for text_lines, literals in items:
        text = b" ".join(text_lines)
        uid = _UID_ITEM.search(text)
        if uid is None:
            continue
        size = _SIZE_ITEM.search(text)
        body: bytes | bytearray | None = literals[0] if literals else None
        if body is None and _EMPTY_BODY.search(text):
            body = b""
        parsed.append(FetchItem(int(uid.group(1)), int(size.group(1)) if size else None, body))
    return parsed


# --- the session ----------------------------------------------------------------------


class ImapSession:
    """One logged-in (or logging-in) IMAP connection over implicit TLS.

    Use ``await ImapSession.open(settings)``, then ``login`` and ``select``;
    always ``await session.aclose()``.
    """

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self.client: ImapClient | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._login_response: Any = None

    # --- connecting -----------------------------------------------------

    @classmethod
    async def open(cls, settings: ImapSettings) -> "ImapSession":
        """TCP connect, TLS handshake, server greeting."""
        session = cls(settings)
        try:
            session.client = ImapClient(
                host=settings.server,
                port=settings.port,
                timeout=settings.timeout,
                conn_lost_cb=session._on_connection_lost,
                ssl_context=tls_context(settings),
            )
            await session._race(session.client.wait_hello_from_server(), settings.timeout + 1)
        except _Lost:
            session.abort()
            raise ConnectionLost(
                f"{settings.server}:{settings.port} closed the connection before greeting"
                f"{session._lost_reason}; the server may be overloaded or refusing this client"
            ) from None
        except ImapError:
            session.abort()
            raise
        except (OSError, asyncio.TimeoutError) as error:
            session.abort()
            raise await describe_connect_failure(error, settings) from None
        except BaseException:
            session.abort()
            raise
        session._keep_alive()
        return session

    def _on_connection_lost(self, error: Exception | None) -> None:
        self._lost_reason = f": {error}" if error else ""
        self._lost.set()

    def _keep_alive(self) -> None:
        """TCP keepalive, so a server that vanished without a FIN (power cut,
        dropped NAT entry) is noticed by the kernel even while we IDLE."""
        transport = self.client.protocol.transport if self.client else None
        sock = transport.get_extra_info("socket") if transport else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
                if hasattr(socket, option):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        except OSError:
            pass

    @property
    def capabilities(self) -> set[str]:
        return set(self.client.protocol.capabilities) if self.client else set()

    def has(self, capability: str) -> bool:
        return capability.upper() in {c.upper() for c in self.capabilities}

    async def login(self) -> None:
        """LOGIN with the password, or, with ``auth=oauth2``, AUTHENTICATE
        XOAUTH2 with an app-only token (asked for again on every login, so
        each reconnect has a token that is still valid)."""
        assert self.client is not None
        if self.settings.auth == "oauth2":
            await self._login_xoauth2()
        else:
            await self._login_password()
        await self._capabilities_after_login()

    async def _login_password(self) -> None:
        assert self.client is not None
        response = await self._guarded(
            self.client.login(aioimaplib.quoted(self.settings.username), self.settings.password),
            "logging in",
            self.settings.timeout,
        )
        if response.result != "OK":
            raise AuthenticationFailed(
                f"authentication failed for user {self.settings.username!r} on {self.settings.server}: "
                f"the server said {_server_text(response)!r}; check the username and password"
            )
        self._login_response = response

    async def _login_xoauth2(self) -> None:
        assert self.client is not None and self.settings.oauth is not None
        oauth = self.settings.oauth
        if not self.has("AUTH=XOAUTH2"):
            raise AuthenticationFailed(
                f"{self.settings.server} does not offer AUTHENTICATE XOAUTH2 (it offers "
                f"{', '.join(sorted(c for c in self.capabilities if c.upper().startswith('AUTH='))) or 'no SASL'}); "
                "auth=oauth2 needs an IMAP server that takes OAuth 2.0 tokens, such as "
                "outlook.office365.com"
            )
        try:
            token = await asyncio.wait_for(
                token_source(oauth, self.settings.timeout).token(), self.settings.timeout + 1
            )
        except TokenRequestFailed as error:
            raise TokenUnavailable(str(error)) from None
        except asyncio.TimeoutError:
            raise TokenUnavailable(
                f"timed out: Entra ID at {oauth.authority_host} gave no token within "
                f"{self.settings.timeout:.0f} s; check the network path to it"
            ) from None
        response = await self._guarded(
            self.client.xoauth2(self.settings.username, token.value), "signing in with XOAUTH2", self.settings.timeout
        )
        if response.result != "OK":
            raise AuthenticationFailed(
                describe_imap_refusal(oauth, self.settings.username, token.claims, _server_text(response))
            )
        self._login_response = response

    async def _capabilities_after_login(self) -> None:
        assert self.client is not None
        if not any(b"CAPABILITY" in bytes(line) for line in self._login_response.lines):
            # Servers may advertise IDLE, MOVE, UIDPLUS only once logged in.
            await self._guarded(self.client.protocol.capability(), "asking for capabilities", self.settings.timeout)

    async def select(self, mailbox: str | None = None) -> MailboxStatus:
        """Open the mailbox read-write (EXAMINE is not used: aioimaplib 2.0.3
        leaves its state machine in AUTH after it, and we need to flag and
        delete anyway)."""
        assert self.client is not None
        name = mailbox or self.settings.mailbox
        response = await self._guarded(
            self.client.select(encode_mailbox_name(name)), f"opening mailbox {name!r}", self.settings.timeout
        )
        if response.result != "OK":
            said = _server_text(response)
            if "NONEXISTENT" in said.upper() or "exist" in said.lower() or "not found" in said.lower():
                raise MailboxNotFound(
                    f"mailbox {name!r} not found on {self.settings.server}: the server said {said!r}; "
                    "check the mailbox setting (folder names are case-sensitive)"
                )
            raise CommandFailed(f"the server refused to open mailbox {name!r}: {said!r}")
        uidvalidity = uidnext = None
        exists = 0
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            if found := _UIDVALIDITY.search(line):
                uidvalidity = int(found.group(1))
            if found := _UIDNEXT.search(line):
                uidnext = int(found.group(1))
            if found := _EXISTS.match(line):
                exists = int(found.group(1))
        if uidvalidity is None:
            raise CommandFailed(
                f"the server opened mailbox {name!r} without a UIDVALIDITY; mailpipe cannot collect "
                "incrementally from a server that does not keep stable UIDs"
            )
        return MailboxStatus(uidvalidity, uidnext, exists)

    # --- reading ------------------------------------------------------------

    async def search_uids(self, first: int, last: int | None = None, criteria: str = "") -> list[int]:
        """UIDs in ``first:last`` (``last`` None: to the end), ascending."""
        assert self.client is not None
        upper = "*" if last is None else str(last)
        query = f"UID {first}:{upper}" + (f" {criteria}" if criteria else "")
        response = await self._guarded(
            self.client.uid_search(query, charset=None), "searching the mailbox", self.settings.timeout
        )
        self._check(response, "UID SEARCH")
        uids = {
            int(token)
            for line in response.lines[:-1]
            for token in bytes(line).split()
            if token.isdigit()
        }
        # "N:*" includes the highest UID even when it is below N (RFC 3501 6.4.8).
        return sorted(uid for uid in uids if uid >= first and (last is None or uid <= last))

    async def fetch_sizes(self, uids: list[int]) -> dict[int, int]:
        items = await self._fetch(uid_set(uids), "(UID RFC822.SIZE)")
        return {item.uid: item.size for item in items if item.size is not None}

    async def fetch_bodies(self, uids: list[int]) -> dict[int, bytes | bytearray]:
        """Whole messages, exactly as the server serves them (``BODY.PEEK``
        leaves ``\\Seen`` alone: after_archive decides that)."""
        items = await self._fetch(uid_set(uids), "(UID BODY.PEEK[])")
        return {item.uid: item.body for item in items if item.body is not None}

    async def fetch_range(self, uid: int, offset: int, length: int) -> bytes | bytearray | None:
        """``length`` bytes of a message from ``offset``; fewer at its end;
        None when the message is gone."""
        items = await self._fetch(str(uid), f"(UID BODY.PEEK[]<{offset}.{length}>)")
        for item in items:
            if item.uid == uid and item.body is not None:
                return item.body
        return None

    async def stream(self, uid: int) -> AsyncIterator[bytes | bytearray]:
        """A message in ranges, for messages too big to hold whole."""
        offset = 0
        while True:
            piece = await self.fetch_range(uid, offset, FETCH_RANGE_BYTES)
            if piece is None:
                raise CommandFailed(f"message UID {uid} disappeared from the mailbox while it was being fetched")
            if piece:
                yield piece
            offset += len(piece)
            if len(piece) < FETCH_RANGE_BYTES:
                return

    async def _fetch(self, uids: str, items: str) -> list[FetchItem]:
        assert self.client is not None
        protocol = self.client.protocol
        command = LinearFetchCommand(
            protocol.new_tag(), uids, items, prefix="UID", loop=protocol.loop, timeout=self.settings.timeout
        )
        # No overall time limit: a 50 MB message may take a while. The
        # command's own timer fires when no data came for ``timeout`` s.
        response = await self._guarded(protocol.execute(command), "fetching messages")
        self._check(response, "UID FETCH")
        return parse_fetch(response.lines)

    # --- after archiving ----------------------------------------------------

    async def add_flags(self, uids: list[int], flags: str) -> None:
        assert self.client is not None
        response = await self._guarded(
            self.client.uid("store", uid_set(uids), "+FLAGS.SILENT", f"({flags})"),
            "flagging messages",
            self.settings.timeout,
        )
        self._check(response, "UID STORE")

    async def delete(self, uids: list[int]) -> None:
        """Flag ``\\Deleted`` and expunge just those UIDs (UIDPLUS); without
        UIDPLUS a plain EXPUNGE also removes what others flagged deleted."""
        assert self.client is not None
        await self.add_flags(uids, "\\Deleted")
        if self.has("UIDPLUS"):
            response = await self._guarded(
                self.client.uid("expunge", uid_set(uids)), "expunging", self.settings.timeout
            )
        else:
            response = await self._guarded(self.client.expunge(), "expunging", self.settings.timeout)
        self._check(response, "EXPUNGE")

    async def move(self, uids: list[int], mailbox: str) -> None:
        """MOVE where offered, else COPY + delete; creates the target folder
        when the server says TRYCREATE."""
        assert self.client is not None
        target = encode_mailbox_name(mailbox)
        for attempt in (1, 2):
            if self.has("MOVE"):
                response = await self._guarded(
                    self.client.uid("move", uid_set(uids), target), "moving messages", self.settings.timeout
                )
            else:
                response = await self._guarded(
                    self.client.uid("copy", uid_set(uids), target), "copying messages", self.settings.timeout
                )
            if response.result == "OK":
                break
            if attempt == 1 and "TRYCREATE" in _server_text(response).upper():
                created = await self._guarded(
                    self.client.create(target), f"creating folder {mailbox!r}", self.settings.timeout
                )
                self._check(created, f"CREATE {mailbox}")
                continue
            raise CommandFailed(f"moving messages to {mailbox!r} failed: {_server_text(response)!r}")
        if not self.has("MOVE"):
            await self.delete(uids)

    # --- waiting for mail -------------------------------------------------------

    async def wait_for_change(self, seconds: float) -> bool:
        """IDLE for up to ``seconds``; True when the server pushed something
        (new mail, expunges...). aioimaplib's IDLE never returns after a BYE,
        so every wait here is bounded and raced against the connection."""
        assert self.client is not None
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # pushes left over from an earlier IDLE
            queue.get_nowait()
        try:
            idle = await self._guarded(
                self.client.idle_start(timeout=seconds), "starting IDLE", self.settings.timeout
            )
        except CommandFailed as error:
            raise IdleRefused(f"the server refused IDLE: {error}") from None
        try:
            pushed = await self._guarded(
                self.client.wait_server_push(timeout=seconds + 1), "in IDLE", seconds + 2
            )
        except CommandTimedOut:
            pushed = aioimaplib.STOP_WAIT_SERVER_PUSH
        changed = pushed != aioimaplib.STOP_WAIT_SERVER_PUSH
        if changed and any(bytes(line).startswith(b"BYE") for line in pushed):
            text = b" ".join(bytes(line) for line in pushed).decode("utf-8", "replace")
            raise ConnectionLost(f"the server ended the session during IDLE: {text}")
        self.client.idle_done()
        response = await self._guarded(idle, "ending IDLE", self.settings.timeout)
        self._check(response, "IDLE")
        return changed

    async def folder_exists(self, name: str) -> bool:
        assert self.client is not None
        response = await self._guarded(
            self.client.status(encode_mailbox_name(name), "(MESSAGES)"), f"looking for folder {name!r}",
            self.settings.timeout,
        )
        return response.result == "OK"

    async def noop(self) -> None:
        assert self.client is not None
        self._check(await self._guarded(self.client.noop(), "NOOP", self.settings.timeout), "NOOP")

    # --- closing ----------------------------------------------------------------

    async def aclose(self) -> None:
        """LOGOUT politely (briefly), then drop the connection whatever happened."""
        try:
            if self.client is not None and not self._lost.is_set() and self.client.get_state() != "LOGOUT":
                await self._guarded(self.client.logout(), "logging out", min(self.settings.timeout, 5))
        except (ImapError, aioimaplib.AioImapException, OSError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        if self.client is None:
            return
        self.client.cancel_connecting()
        transport = self.client.protocol.transport
        if transport is not None:
            transport.close()
        self._lost.set()

    # --- plumbing -----------------------------------------------------------------

    async def _guarded(self, awaitable: Awaitable[T], doing: str, timeout: float | None = None) -> T:
        """Await an aioimaplib call, but give up when the connection is lost
        or ``timeout`` passes; either way the session is unusable after."""
        try:
            return await self._race(awaitable, timeout)
        except (asyncio.TimeoutError, aioimaplib.CommandTimeout):
            raise self._timed_out(doing) from None
        except _Lost:
            raise ConnectionLost(
                f"IMAP server {self._where} closed the connection while {doing}{self._lost_reason}"
            ) from None
        except aioimaplib.AioImapException as error:
            raise CommandFailed(f"IMAP error while {doing}: {error}") from None
        except ConnectionError as error:
            raise ConnectionLost(f"the connection to IMAP server {self._where} broke while {doing}: {error}") from None

    @property
    def _where(self) -> str:
        return f"{self.settings.server}:{self.settings.port}"

    async def _race(self, awaitable: Awaitable[T], timeout: float | None) -> T:
        """The awaitable's result or exception; ``_Lost`` if the connection
        went first; ``asyncio.TimeoutError`` after ``timeout``."""
        if self._lost.is_set():
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # an un-awaited coroutine, dropped on purpose
            raise _Lost()
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        if lost in done:
            raise _Lost()
        raise asyncio.TimeoutError()

    def _timed_out(self, doing: str) -> CommandTimedOut:
        return CommandTimedOut(
            f"timed out while {doing}: {self.settings.server}:{self.settings.port} did not answer "
            f"within {self.settings.timeout:.0f} s"
        )

    @staticmethod
    def _check(response: Any, command: str) -> None:
        if response.result != "OK":
            raise CommandFailed(f"the server refused {command}: {_server_text(response)!r}")


# --- describing connection failures ------------------------------------------------------


async def describe_connect_failure(error: BaseException, settings: ImapSettings) -> ImapError:
    """Turn what asyncio/ssl raised while connecting into a sentence naming the cause."""
    where = f"{settings.server}:{settings.port}"
    if isinstance(error, socket.gaierror):
        return ConnectFailed(
            f"the host name {settings.server!r} does not resolve ({error.strerror or error}); "
            "check the server setting"
        )
    if isinstance(error, ConnectionRefusedError):
        return ConnectFailed(
            f"connection refused by {where}: nothing accepts connections on that port; "
            "check the port (IMAPS is usually 993) and that the server is running"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or str(error)
        return ConnectFailed(
            f"TLS certificate check failed for {settings.server}: {reason}; set ca_file to the CA "
            "that signed the server's certificate (or, not recommended, tls_verify=false)"
        )
    if isinstance(error, (ssl.SSLError, ConnectionResetError)) or (
        isinstance(error, OSError) and "SSL" in str(error)
    ):
        greeting = await plain_greeting(settings.server, settings.port, min(settings.timeout, 5.0))
        if greeting.startswith(_PLAIN_GREETING):
            return ConnectFailed(
                f"the server does not speak TLS on this port: {where} answered in plain IMAP. "
                "mailpipe connects with implicit TLS only (IMAPS), so the password is never sent "
                "in clear; use the server's IMAPS port (usually 993)"
            )
        # A TLS server never speaks first: a greeting, or bytes that are not
        # a TLS record, mean another protocol listens on this port.
        if greeting or getattr(error, "reason", None) in _NOT_TLS_REASONS:
            said = greeting.split(b"\r\n")[0].split(b"\n")[0].decode("ascii", "replace")
            return ConnectFailed(
                f"the server does not speak TLS on this port: {where} answered with something else"
                + (f" ({said!r})" if said else "")
                + "; mailpipe connects with implicit TLS only (IMAPS): use the server's IMAPS port (usually 993)"
            )
        reason = getattr(error, "reason", None) or str(error)
        return ConnectFailed(f"TLS handshake with {where} failed: {reason}")
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return ConnectFailed(
            f"timed out: {where} did not complete the TLS handshake and IMAP greeting within "
            f"{settings.timeout:.0f} s; check the address, the port and any firewall in between"
        )
    return ConnectFailed(f"cannot connect to {where}: {getattr(error, 'strerror', None) or error}")


async def plain_greeting(host: str, port: int, timeout: float) -> bytes:
    """What the port says before the client says anything (``* OK ...`` for
    plain IMAP, ``220 ...`` for SMTP); empty when it says nothing within
    ``timeout``. The usual mistake behind it: an implicit-TLS client
    pointed at port 143 or at another service."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return await asyncio.wait_for(reader.read(64), timeout)
    except (OSError, asyncio.TimeoutError):
        return b""
    finally:
        if writer is not None:
            writer.close()
