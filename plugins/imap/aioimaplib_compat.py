"""Every use of aioimaplib's internals, in one place (tested against aioimaplib 2.0.3).

aioimaplib's public API speaks IMAP well enough, but three of its parts
fail a collector that runs for months; they are replaced here by
subclasses that override its private methods, and nowhere else in mailpipe
touches a private name of aioimaplib. ``RELIES_ON`` lists each name and
signature these subclasses assume; ``tests/plugins/imap/test_aioimaplib_compat.py``
checks them against the installed library and checks that this module
uses no private name missing from the table. pyproject.toml pins
aioimaplib to the releases that test covers (2.0.0 differs from 2.0.3
exactly in what is overridden here).

What is replaced, and why:

- The response reader (:class:`ImapProtocol`, overriding
  ``IMAP4ClientProtocol._handle_responses``). aioimaplib's calls itself once
  per response line and hands each call a copy of the rest of the read
  (``bytes.partition``): a read of n lines copies O(n²) bytes and needs n
  stack frames, so a read holding about a thousand responses (the
  ``* n EXPUNGE`` lines of a large expunge, the FETCH answers of many small
  messages) overflowed Python's recursion limit and killed the session. The
  same steps run here in a loop over positions in the read, handing
  literal data over as a memoryview; its ``data_received`` (which formats
  the repr of every byte received before the logger looks at its level) is
  bypassed unless debug logging is on — and then it calls this reader too,
  so nothing recurses and no interpreter setting is changed. Measured:
  the benchmark ratio went from 0.98–1.00× to 0.93–1.07× (docs/imap.md).
- The XOAUTH2 refusal (``IMAP4ClientProtocol._continuation``): a refused
  token gets a ``+ <error JSON>`` challenge first (RFC 7628; Dovecot,
  Gmail and Microsoft 365 do it), which the client must answer with an
  empty line before the tagged ``NO`` comes; aioimaplib would wait for the
  ``NO`` forever.
- FETCH completeness and its timer (:class:`LinearFetchCommand`, overriding
  ``FetchCommand.wait_data`` and ``Command._set_timer/_reset_timer``).
  aioimaplib rescans every line received so far for each new line (a
  500-message FETCH is quadratic) and cancels and re-arms a timer per line;
  here parentheses are counted since the last ``N FETCH (`` line, and one
  armed timer times the command out or re-arms itself for the rest. Measured:
  0.87–0.91× → 0.98–1.00× (docs/imap.md).
- Connecting (:class:`ImapClient`, overriding ``IMAP4.create_client``): the
  only way to give ``IMAP4`` another protocol class; its private
  ``_client_task`` (the TCP/TLS connect) is cancelled by
  :meth:`ImapClient.cancel_connecting` when a session is aborted early.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aioimaplib

from mailpipe.common.reliance import Reliance

_AIOIMAPLIB_LOG = logging.getLogger("aioimaplib.aioimaplib")

_Protocol = aioimaplib.IMAP4ClientProtocol
_Command = aioimaplib.Command
_FetchCommand = aioimaplib.FetchCommand


class ImapProtocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, reading responses in linear time, answering a
    refused XOAUTH2."""

    def data_received(self, d: bytes) -> None:
        if _AIOIMAPLIB_LOG.isEnabledFor(logging.DEBUG):
            super().data_received(d)
            return
        try:
            self._handle_responses(self.incomplete_line + d, self._handle_line, self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _handle_responses(
        self, data: bytes, line_handler: Any, current_cmd: aioimaplib.Command | None = None
    ) -> None:
        view = memoryview(data)
        end = len(data)
        position = 0
        while True:
            if position >= end:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                rest = current_cmd.append_literal_data(view[position:])
                position = end - len(rest)
                if current_cmd.wait_literal_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
            line_end = data.find(b"\r\n", position)
            if line_end < 0:
                raise aioimaplib.IncompleteRead(current_cmd, data[position:])
            line = data[position:line_end]
            position = line_end + 2
            command = line_handler(line, current_cmd)
            begin_literal = aioimaplib.literal_data_re.match(line)
            if begin_literal:
                if command is None:
                    command = aioimaplib.Command("NIL", "unused")
                command.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = command
            elif command is not None and command.wait_data():
                current_cmd = command
            else:
                current_cmd = None

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is not None and command.name == "AUTHENTICATE" and self.transport is not None:
            self.transport.write(aioimaplib.CRLF)  # the empty answer to a refused XOAUTH2
            return
        super()._continuation(line)


class ImapClient(aioimaplib.IMAP4):
    """``aioimaplib.IMAP4`` speaking through :class:`ImapProtocol`."""

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = ImapProtocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )

    def cancel_connecting(self) -> None:
        """Stop the TCP/TLS connect if it is still under way."""
        task = getattr(self, "_client_task", None)
        if task is not None and not task.done():
            task.cancel()


class LinearFetchCommand(aioimaplib.FetchCommand):
    """``FetchCommand`` deciding "is the answer complete?" incrementally,
    with one inactivity timer instead of one per line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scanned = 0
        self._depth = 0

    def _set_timer(self) -> None:
        if self._timeout is not None:
            self._last_activity = self._loop.time()
            self._timer = self._loop.call_later(self._timeout, self._check_activity)

    def _reset_timer(self) -> None:
        self._last_activity = self._loop.time()

    def _check_activity(self) -> None:
        quiet = self._loop.time() - self._last_activity
        if quiet >= self._timeout:
            self._timeout_callback()
        else:
            self._timer = self._loop.call_later(self._timeout - quiet, self._check_activity)

    def wait_data(self) -> bool:
        lines = self._resp_lines
        for line in lines[self._scanned :]:
            if not isinstance(line, bytes):
                continue
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._depth = 0
            self._depth += line.count(b"(") - line.count(b")")
        self._scanned = len(lines)
        return self._depth != 0


#: The releases the checks of ``RELIES_ON`` were run against; pyproject.toml
#: lists exactly this requirement (the test checks that too).
REQUIREMENT = "aioimaplib>=2.0.3,<2.1"

RELIES_ON: tuple[Reliance, ...] = (
    # module-level names the reader uses
    Reliance(aioimaplib, "IMAP4ClientProtocol", "ImapProtocol's base"),
    Reliance(aioimaplib, "IMAP4", "ImapClient's base"),
    Reliance(aioimaplib, "FetchCommand", "LinearFetchCommand's base"),
    Reliance(aioimaplib, "Command", "the reader creates a placeholder command for an unsolicited literal"),
    Reliance(aioimaplib, "IncompleteRead", "how the reader hands the rest of a read to the next one"),
    Reliance(aioimaplib, "literal_data_re", "the reader's test for a line announcing a literal ({n})"),
    Reliance(aioimaplib, "CRLF", "the empty answer to a refused XOAUTH2"),
    Reliance(aioimaplib.IncompleteRead, "__init__", "raised with (command, rest of the read)", ("self", "cmd", "data")),
    Reliance(aioimaplib.IncompleteRead, "cmd", "the command still reading", set_in="__init__"),
    Reliance(aioimaplib.IncompleteRead, "data", "the unread rest", set_in="__init__"),
    # the protocol: reader and continuation
    Reliance(_Protocol, "__init__", "ImapClient creates the protocol", ("self", "loop", "conn_lost_cb")),
    Reliance(_Protocol, "data_received", "bypassed (its repr of every read) unless debug logging is on",
             ("self", "d"), override=ImapProtocol),
    Reliance(_Protocol, "_handle_responses", "recursive and quadratic: replaced by a loop",
             ("self", "data", "line_handler", "current_cmd"), override=ImapProtocol),
    Reliance(_Protocol, "_handle_line", "the per-line handler the reader calls", ("self", "line", "current_cmd")),
    Reliance(_Protocol, "_continuation", "a refused XOAUTH2 must be answered with an empty line",
             ("self", "line"), override=ImapProtocol),
    Reliance(_Protocol, "incomplete_line", "the unparsed rest of the last read", set_in="__init__"),
    Reliance(_Protocol, "current_command", "the command whose answer the last read left open", set_in="__init__"),
    Reliance(_Protocol, "pending_sync_command", "flushed after each read; AUTHENTICATE in progress",
             set_in="__init__"),
    Reliance(_Protocol, "transport", "where the XOAUTH2 answer is written", set_in="connection_made"),
    Reliance(_Command, "wait_literal_data", "is a literal still arriving?", ("self",)),
    Reliance(_Command, "append_literal_data", "takes literal bytes, returns what is left",
             ("self", "data")),
    Reliance(_Command, "begin_literal_data", "starts a literal of n bytes",
             ("self", "expected_size", "literal_data")),
    Reliance(_Command, "flush", "called after each read, as aioimaplib does", ("self",)),
    # FETCH completeness and its inactivity timer
    Reliance(_FetchCommand, "wait_data", "rescans every line per line: counted incrementally",
             ("self",), override=LinearFetchCommand),
    Reliance(_FetchCommand, "FETCH_MESSAGE_DATA_RE", "where one message's answer starts"),
    Reliance(_Command, "_set_timer", "called by Command.__init__ to arm the timer: arms the inactivity timer",
             ("self",), override=LinearFetchCommand),
    Reliance(_Command, "_reset_timer", "called per line received: only notes the time",
             ("self",), override=LinearFetchCommand),
    Reliance(_Command, "_timeout_callback", "ends the command with CommandTimeout", ("self",)),
    Reliance(_Command, "_timer", "the armed timer, cancelled by Command.close", set_in="__init__"),
    Reliance(_Command, "_timeout", "the inactivity timeout in seconds (None: none)", set_in="__init__"),
    Reliance(_Command, "_loop", "the loop the timer runs on", set_in="__init__"),
    Reliance(_Command, "_resp_lines", "the answer's lines received so far", set_in="__init__"),
    # connecting
    Reliance(aioimaplib.IMAP4, "create_client", "the only way to give IMAP4 another protocol class",
             ("self", "host", "port", "loop", "conn_lost_cb", "ssl_context"), override=ImapClient),
    Reliance(aioimaplib.IMAP4, "_client_task", "the connect task, awaited by wait_hello_from_server",
             set_in="create_client"),
)
