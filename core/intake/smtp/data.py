"""Streaming the SMTP DATA phase: end-of-data, dot-unstuffing and checks, in pieces.

The DATA text is handled in the pieces the socket delivers (at most a few
hundred kilobytes) and each piece is handed on to the spool at once, so a
150 MB message costs a few hundred kilobytes of memory, not 150 MB.

The rules (RFC 5321 4.1.1.4 and 4.5.2):

- the data ends at the first ``CRLF . CRLF`` (the DATA text starts at the
  beginning of a line, so a lone ``. CRLF`` as first line ends it too);
  nothing else ends it: ``LF . LF`` or ``LF . CRLF`` are data, which is what
  keeps "SMTP smuggling" out;
- a line that begins with a dot lost one dot to transparency; "line" means
  after ``CRLF``, the only line ending SMTP has;
- every other byte is kept as received: bare LF, bare CR, NUL, 8-bit bytes
  and lines of any length. :class:`DataChecks` only *observes* them, so that
  the listener can refuse them when the operator asks for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

END_OF_DATA = b"\r\n.\r\n"
#: RFC 5322 2.1.1: 998 characters per line, not counting CRLF.
RFC_LINE_LIMIT = 998

# The DATA text begins at the start of a line: reading starts as if the
# bytes just before it had been CRLF. These two virtual bytes never reach
# the message.
_VIRTUAL_LINE_START = b"\r\n"


def _held_length(data: bytes) -> int:
    """How many bytes at the end of ``data`` may be the start of END_OF_DATA."""
    for length in (4, 3, 2, 1):
        if data.endswith(END_OF_DATA[:length]):
            return length
    return 0


class DataScanner:
    """Finds the end of the DATA text in the pieces the connection receives.

    ``deliver`` gets the raw (still dot-stuffed) bytes before the final
    ``. CRLF``, in order, starting with the two virtual bytes of the line
    start (DotUnstuffer drops them). The last up to four bytes of a piece
    are held back while they may be the start of the end mark, so a mark
    split across pieces is found too; nothing else is held.
    """

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver
        self._held = _VIRTUAL_LINE_START

    def feed(self, data: bytes) -> int | None:
        """Scan ``data``; None when all of it is message text and more is to
        come, else how many of its bytes the text and the end mark took (what
        follows is the next command)."""
        held = self._held
        text = held + data if held else data
        end = text.find(END_OF_DATA)
        if end >= 0:
            # The CRLF before the final dot belongs to the last line.
            self._deliver(text[: end + 2])
            self._held = b""
            return end + len(END_OF_DATA) - len(held)
        keep = _held_length(text)
        if keep < len(text):
            self._deliver(text[: len(text) - keep] if keep else text)
        self._held = text[len(text) - keep :] if keep else b""
        return None


class DotUnstuffer:
    """Removes the transparency dot from lines that begin with one.

    Fed the raw stream in arbitrary pieces (starting with the virtual CRLF
    that :class:`DataScanner` delivers first); a trailing CR or CRLF is held
    back until the next piece shows whether a dot follows it.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._skip = len(_VIRTUAL_LINE_START)

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        if buffer.endswith(b"\r\n"):
            keep = 2
        elif buffer.endswith(b"\r"):
            keep = 1
        else:
            keep = 0
        if keep:
            self._pending = buffer[-keep:]
            buffer = buffer[:-keep]
        else:
            self._pending = b""
        return self._strip_virtual(buffer.replace(b"\r\n.", b"\r\n"))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._strip_virtual(rest)

    def _strip_virtual(self, data: bytes) -> bytes:
        if self._skip and data:
            cut = min(self._skip, len(data))
            self._skip -= cut
            return data[cut:]
        return data


@dataclass
class DataChecks:
    """What the message contains that the operator may refuse, or that is
    worth a note beside the archived bytes.

    Observes the dot-unstuffed bytes in the pieces :class:`DotUnstuffer`
    returns, which never separate a CR from the LF after it; line lengths
    exclude the CRLF (or bare LF) that ends the line.
    """

    size: int = 0
    bare_lf: bool = False
    nul: bool = False
    longest_line: int = 0
    _open_line: int = 0

    def observe(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        line_feeds = data.count(b"\n")
        if line_feeds and not self.bare_lf and data.count(b"\r\n") != line_feeds:
            self.bare_lf = True
        if not self.nul and b"\x00" in data:
            self.nul = True
        if not line_feeds:
            self._open_line += len(data)
            self.longest_line = max(self.longest_line, self._open_line)
            return
        lines = data.split(b"\n")
        first = lines[0]
        closed = [self._open_line + len(first) - first.endswith(b"\r")]
        closed.extend(len(line) - line.endswith(b"\r") for line in lines[1:-1])
        self._open_line = len(lines[-1])
        self.longest_line = max(self.longest_line, self._open_line, *closed)
