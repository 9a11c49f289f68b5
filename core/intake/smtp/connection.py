"""The byte side of an SMTP session: an ``asyncio.Protocol`` that turns what
arrives into command lines and DATA text, and replies into writes.

Why hand-written, and not aiosmtpd's ``SMTP`` (which mailpipe used until
issue 16): aiosmtpd reads every line through a ``StreamReader`` in a
coroutine per connection, awaits a ``drain()`` after every reply, logs every
command, and builds its command table with ``dir()`` for every connection.
Measured with ``benchmarks/bench_smtp.py`` (docs/benchmarks.md, "SMTP: the
profile and each step"), that bookkeeping, not the spool, was most of
mailpipe's time per message, and a bare aiosmtpd that discards every
message was faster than mailpipe. Here a command that needs no waiting
(EHLO, MAIL, RSET, NOOP, ...) is answered inside ``data_received``;
pipelined commands are answered in one write; DATA text is scanned as it
arrives, without a coroutine per piece. Only what must wait (routing a
recipient through the plugins, creating spool files, committing, STARTTLS,
reading a PROXY header) runs as a task, one at a time, and the session
reads on when it is done.

The rules kept from aiosmtpd (and RFC 5321): a command line ends at LF (a
CR before it is dropped), its verb is ASCII, its argument is UTF-8 with
undecodable bytes kept as surrogates; a line over its limit gets ``500``
once it has ended, whatever its length (nothing of it is kept); five
unknown commands end the session; the inactivity timeout is re-armed by
every command and by every piece of DATA text. After STARTTLS whatever the
client sent in the clear behind the command is discarded (RFC 3207 4.2).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Awaitable, Callable

log = logging.getLogger("mailpipe.smtp")

#: Bytes of unfinished command line held before the line is known to be too
#: long and dropped (its ``500`` comes when it ends).
LINE_HOLD_LIMIT = 4096
#: Bytes held unread while a step runs; beyond it the socket is not read.
READ_HOLD_LIMIT = 256 * 1024
#: Unknown commands a session may send before it is closed.
UNKNOWN_COMMAND_LIMIT = 5
#: Seconds a client has to finish the TLS handshake after ``220``.
TLS_HANDSHAKE_TIMEOUT = 60.0


class ConnectionBase(asyncio.Protocol):
    """Buffers, steps, timers and flow control for one SMTP connection.

    Subclasses implement :meth:`handle_line` (one command line, CRLF
    stripped), :meth:`handle_data_text` (DATA text while a data phase is
    on: returns how many bytes it used, or None for all of them and more to
    come), and may override the hooks named ``on_*``.
    """

    def __init__(self, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.idle_timeout = idle_timeout
        self.closed = False
        #: True while DATA text, not commands, is arriving
        self.in_data = False
        self._buffer = bytearray()
        self._replies: list[bytes] = []
        self._step: asyncio.Task[None] | None = None
        self._dropping_long_line = False
        self._reading_paused = False
        self._writing_paused = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        self.touch()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.in_data and not self._buffer and self._step is None:
            # The usual case in DATA: scan the bytes as they came, no copy.
            self.touch()
            used = self.handle_data_text(data)
            if used is None:
                return
            data = data[used:]
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.process()

    def eof_received(self) -> bool | None:
        self.on_client_closed()
        return False  # close our side too; a reply still being made is not wanted

    def connection_lost(self, error: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("the client closed the connection"))
        self._buffer.clear()

    def pause_writing(self) -> None:
        # The client does not read its replies: read no more commands either.
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.process()

    # --- what subclasses implement -------------------------------------------

    def handle_line(self, line: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def handle_data_text(self, data: bytes) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_client_closed(self) -> None:
        """The client closed its side (EOF)."""

    def on_idle_timeout(self) -> None:
        """The inactivity timeout passed; the connection is closed after this."""

    # --- reading -------------------------------------------------------------

    def process(self) -> None:
        """Handle what has arrived, until it is used up, a step starts, or the
        session ends; then send the replies made meanwhile in one write."""
        buffer = self._buffer
        while buffer and self._step is None and not self.closed and not self._writing_paused:
            if self.in_data:
                text = bytes(buffer)
                buffer.clear()
                self.touch()
                used = self.handle_data_text(text)
                if used is not None:
                    buffer[:0] = text[used:]
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > LINE_HOLD_LIMIT:
                    buffer.clear()
                    self._dropping_long_line = True
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if self._dropping_long_line:
                self._dropping_long_line = False
                self.reply("500 5.5.2 Command line too long")
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            self.handle_line(line)
        self.flush()
        self._hold_reading(len(buffer) > READ_HOLD_LIMIT or self._writing_paused)

    def _hold_reading(self, hold: bool) -> None:
        if self.transport is None or self.closed or hold == self._reading_paused:
            return
        self._reading_paused = hold
        if hold:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    @property
    def unread(self) -> bytearray:
        """What arrived and was not handled yet (a step may read it itself)."""
        return self._buffer

    async def receive_more(self) -> None:
        """Wait until more bytes arrive (for a step that reads :attr:`unread`
        itself); ``ConnectionResetError`` once the connection is gone."""
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    # --- replying --------------------------------------------------------------

    def reply(self, line: str) -> None:
        """Queue a reply line; it is sent with the others at the next flush."""
        self._replies.append(line.encode("utf-8", "surrogateescape") + b"\r\n")

    def flush(self) -> None:
        if self._replies and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self._replies) if len(self._replies) > 1 else self._replies[0])
        self._replies.clear()

    def close(self) -> None:
        """Send the queued replies, then close (asyncio sends what is buffered first)."""
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # --- steps that wait ---------------------------------------------------------

    def start_step(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` as a task; reading stops until it is done. A failure
        is logged and answered with a temporary error, never a traceback.
        Replies queued before it go out with the step's own."""
        self._step = self.loop.create_task(self._run_step(work))

    async def _run_step(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("SMTP session failed", extra={"error": f"{type(error).__name__}: {error}"})
            self.reply("451 4.3.0 local error in processing; try again later")
        finally:
            self._step = None
        if not self.closed:
            self.process()

    def cancel_step(self) -> None:
        if self._step is not None:
            self._step.cancel()

    def prepare_tls(self) -> None:
        """Called with the ``220`` to STARTTLS, before it is sent: nothing the
        client sends from now on is read as cleartext, and what it sent behind
        the command is forgotten (RFC 3207 4.2)."""
        assert self.transport is not None
        self.transport.pause_reading()
        self._reading_paused = True
        self._buffer.clear()

    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """Upgrade to TLS in place (after :meth:`prepare_tls` and the ``220``);
        False, with the connection closed, when the handshake fails."""
        assert self.transport is not None
        self.flush()
        try:
            secure = await self.loop.start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as error:
            log.info("TLS handshake failed", extra={"error": f"{type(error).__name__}: {error}"})
            if self.transport is not None:
                self.transport.close()
            self.closed = True
            return False
        if secure is None or self.closed:
            return False
        self.transport = secure
        self._reading_paused = False
        return True

    # --- the inactivity timeout ----------------------------------------------------

    def touch(self, timeout: float | None = None) -> None:
        """The client did something: the session may now stay idle ``timeout``
        seconds (default: the idle timeout) before it is closed."""
        self._deadline = self.loop.time() + (timeout or self.idle_timeout)
        if self._timer is None or self._deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(self._deadline, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per session, moved only when it fires: re-arming it for
        # every command would cost a heap operation per command.
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._check_idle)
            return
        self._timer = None
        if self.closed:
            return
        self.on_idle_timeout()
        self.close()


def surrogate_text(data: bytes) -> str:
    """Command arguments as text: UTF-8, other bytes kept as surrogates, so
    that they can be turned back into the bytes the client sent."""
    return data.decode("utf-8", "surrogateescape")

