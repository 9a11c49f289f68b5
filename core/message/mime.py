"""A small streaming MIME walker that works on files, not on parsed trees.

Why not ``email.message_from_binary_file``? The standard parser builds the
whole message in memory, and a journaled message may be 150 MB. The spool
holds every message as a file, so this module reads it in 64 KiB chunks and
only ever keeps header blocks (bounded by a limit) and one chunk in memory.

What it gives you:

* :func:`read_headers` parses the header block at the start of a file.
* :func:`iter_parts` walks the MIME tree depth-first and yields a
  :class:`MimePart` for the message itself, every part of every
  ``multipart/*`` and the message encapsulated in every ``message/rfc822``
  part, each with the byte offsets of the whole part and of its body. The
  offsets let callers slice the original bytes out of the file unaltered
  ("bytes are evidence").
* :func:`iter_body` / :func:`read_body` decode a part's body
  (7bit, 8bit, binary, quoted-printable, base64) as a stream or up to a limit.

Offsets follow RFC 2046: the line break before a ``--boundary`` line belongs
to the delimiter, not to the part before it, so a part attached by a
well-behaved generator is recovered byte for byte. Both CRLF and bare LF
line endings are understood.

Malformed input never raises: a missing boundary parameter, a missing closing
boundary, stray lines in a header block and the like are tolerated, the walker
yields what it can, and a sentence describing the damage is added to the
affected part's :attr:`MimePart.defects`. The only exception that leaves this
module is :class:`MimeError`, raised when the bytes cannot be read at all
(missing file, I/O error, a file object that cannot seek).
"""

from __future__ import annotations

import binascii
import io
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import BinaryIO, Union

from mailpipe.errors import MailpipeError

__all__ = [
    "CHUNK_SIZE",
    "HEADER_LIMIT",
    "IDENTITY_ENCODINGS",
    "MAX_DEPTH",
    "MimeError",
    "MimePart",
    "Source",
    "decode_header_text",
    "header_text",
    "iter_body",
    "iter_parts",
    "read_body",
    "read_headers",
]

#: Size of every read from the file. Memory use is a small multiple of it.
CHUNK_SIZE = 64 * 1024
#: Default cap on the bytes of one header block that are kept and parsed.
HEADER_LIMIT = 1024 * 1024
#: Default cap on MIME nesting; deeper parts are not walked (a defect says so).
MAX_DEPTH = 32
#: Transfer encodings whose body bytes are the content itself.
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
#: Content types whose body is a complete message (RFC 2046, RFC 6532).
ENCAPSULATING_TYPES = frozenset({"message/rfc822", "message/global"})

# Transport padding allowed after a boundary before the line break. RFC 2046
# allows any amount; real generators add none, so a small cap is enough and
# keeps the look-ahead bounded.
_MAX_PADDING = 256
# Quoted-printable text is decoded a line at a time; a "line" longer than this
# is decoded in pieces (carefully, never splitting an "=XX" escape).
_QP_MAX_PENDING = 1024 * 1024
# Header-field syntax (RFC 5322 ftext) or a folded continuation line.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:|[ \t]")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_JUNK = bytes(b for b in range(256) if b not in _BASE64_ALPHABET)
_BOUNDARY_PARAM = re.compile(r"""(?i)[;\s]boundary\s*=\s*(?:"([^"]*)"|([^\s;"]+))""")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_SPACE_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(?==\?)")

#: A path to a message file, or a binary file object positioned anywhere.
Source = Union[str, "os.PathLike[str]", BinaryIO]


class MimeError(MailpipeError):
    """The message could not be read at all (not: the message is malformed).

    Raised for a missing or unreadable file, an I/O error while reading, or a
    file object that cannot seek where seeking is needed. Malformed MIME is
    never an error here; see :attr:`MimePart.defects`.
    """


@dataclass(eq=False)
class MimePart:
    """One node of the MIME tree, located by byte offsets in the source file.

    ``start``/``end`` delimit the whole part (header block and body);
    ``body_start``/``body_end`` delimit its body, still transfer-encoded. For
    the top-level message, ``start`` is 0 and ``end`` the file size. For the
    message encapsulated in a ``message/rfc822`` part, ``start``/``end`` equal
    that part's ``body_start``/``body_end``.

    ``defects`` holds sentences describing damage found in this part. Damage
    in a multipart's structure (e.g. no closing boundary) is only known once
    its children have been walked, so the list may grow while iteration
    continues.
    """

    headers: Message
    start: int
    end: int
    body_start: int
    body_end: int
    content_type: str
    depth: int
    #: Position in the tree: () for the message, (0,) its first part, ...
    index: tuple[int, ...]
    parent: MimePart | None = field(default=None, repr=False)
    defects: list[str] = field(default_factory=list)
    source: Source | None = field(default=None, repr=False)

    @property
    def transfer_encoding(self) -> str:
        """The Content-Transfer-Encoding, lower-cased; "7bit" when absent."""
        value = header_text(self.headers, "Content-Transfer-Encoding")
        return value.strip().lower() if value and value.strip() else "7bit"

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")

    @property
    def is_message(self) -> bool:
        """True for a part whose body is a whole message (message/rfc822)."""
        return self.content_type in ENCAPSULATING_TYPES

    @property
    def boundary(self) -> bytes | None:
        """The multipart boundary as bytes, or None when there is none."""
        return _boundary_of(self.headers)

    @property
    def charset(self) -> str | None:
        """The charset parameter, lower-cased, or None."""
        try:
            charset = self.headers.get_content_charset()
        except Exception:  # a mangled parameter list is not worth failing for
            return None
        return charset or None

    def header(self, name: str) -> str | None:
        """The named header as readable text (see :func:`header_text`)."""
        return header_text(self.headers, name)


# --- reading ---------------------------------------------------------------


@contextmanager
def _open(source: Source) -> Iterator[BinaryIO]:
    """Yield a binary file for ``source``; open and close it if it is a path."""
    if isinstance(source, (str, os.PathLike)):
        try:
            handle = open(source, "rb")
        except OSError as error:
            reason = error.strerror or error
            raise MimeError(f"Cannot open the message file {os.fspath(source)!r}: {reason}.") from error
        with handle:
            yield handle
    else:
        yield source


def _file_size(handle: BinaryIO) -> int:
    try:
        return handle.seek(0, io.SEEK_END)
    except (OSError, ValueError, AttributeError) as error:
        raise MimeError(f"Cannot walk the message: its file cannot seek ({error}).") from error


class _ChunkReader:
    """Reads a byte range of a file in chunks.

    It seeks before every read, so several readers (one per nesting level of
    the walk) can share one file handle without stepping on each other.
    ``start=None`` reads forward from the current position without seeking,
    for streams that cannot seek.
    """

    def __init__(self, handle: BinaryIO, start: int | None, end: int | None, size: int = CHUNK_SIZE) -> None:
        self.handle = handle
        self.pos = start
        self.end = end
        self.size = size

    def read(self) -> bytes:
        want = self.size if self.end is None or self.pos is None else min(self.size, self.end - self.pos)
        if want <= 0:
            return b""
        try:
            if self.pos is not None:
                self.handle.seek(self.pos)
            data = self.handle.read(want)
        except (OSError, ValueError) as error:
            raise MimeError(f"Cannot read the message: {error}.") from error
        if self.pos is not None:
            self.pos += len(data)
        return data or b""


def _iter_lines(reader: _ChunkReader, start: int, keep: int) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(offset, head, next_offset)`` for each line the reader delivers.

    Lines end at LF (so CRLF and bare LF both work). ``head`` is at most the
    first ``keep`` bytes of the line, so one absurdly long line cannot use
    unbounded memory; ``next_offset - offset`` is its true length.
    """
    buf = b""
    base = start  # file offset of buf[0]
    pos = 0  # index in buf of the first byte not yet consumed
    line_start = start
    head = b""  # the kept start of a line that spans chunks
    while True:
        newline = buf.find(b"\n", pos)
        if newline >= 0:
            piece = buf[pos : newline + 1]
            line = head + piece[: max(0, keep - len(head))] if head else piece[:keep]
            yield line_start, line, base + newline + 1
            pos = newline + 1
            line_start = base + pos
            head = b""
            continue
        if len(head) < keep:
            head += buf[pos : pos + keep - len(head)]
        chunk = reader.read()
        if not chunk:
            end = base + len(buf)
            if line_start < end:
                yield line_start, head, end
            return
        base += len(buf)
        buf = chunk
        pos = 0


def _is_blank(line: bytes) -> bool:
    return line in (b"\n", b"\r\n", b"\r")


def _scan_header_block(
    reader: _ChunkReader, start: int, limit: int
) -> tuple[bytes, int | None, list[str]]:
    """Find a header block: return its kept bytes, where the body starts, defects.

    The block ends at the first empty line, or before the first line that is
    neither a header field nor a continuation (the body then starts there, as
    Python's own parser does). ``body_start`` is None when the data ran out
    first: the part has headers and no body.
    """
    kept: list[bytes] = []
    size = 0
    defects: list[str] = []
    truncated = False
    first = True
    for offset, line, next_offset in _iter_lines(reader, start, keep=limit + 1):
        if _is_blank(line):
            return _join(kept), next_offset, defects
        header_like = _HEADER_LINE.match(line) is not None and not (first and line[:1] in b" \t")
        if not header_like and not (first and line.startswith(b"From ")):
            if not first:
                defects.append(
                    "A line in the header block is not a header field; the body was taken to start at that line."
                )
            return _join(kept), offset, defects
        first = False
        length = next_offset - offset
        if not truncated and size + length <= limit and len(line) == length:
            kept.append(line)
            size += length
        elif not truncated:
            truncated = True
            defects.append(
                f"The header block is larger than {limit} bytes; only the headers before that point were read."
            )
    return _join(kept), None, defects


def _join(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def _parse_header_bytes(data: bytes) -> tuple[Message, list[str]]:
    """Parse a header block leniently; garbage gives an empty Message, not an error."""
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(data), []
    except Exception:  # the stdlib parser is lenient, but the contract is "never crash"
        return Message(policy=policy.compat32), ["The header block could not be parsed and was ignored."]


def read_headers(source: Source, limit: int = HEADER_LIMIT) -> Message:
    """Parse the header block of a message without reading its body.

    ``source`` is a path, or a binary file object read forward from its
    current position (it need not seek; it may be read a little past the
    header block). At most ``limit`` bytes of headers are kept. Raw 8-bit
    bytes, bare LF line endings and NUL bytes are accepted; use
    :func:`header_text` to get readable values. Raises :class:`MimeError`
    only when the source cannot be read.
    """
    with _open(source) as handle:
        reader = _ChunkReader(handle, None, None)
        data, _, _ = _scan_header_block(reader, 0, limit)
    message, _ = _parse_header_bytes(data)
    return message


# --- header values ------------------------------------------------------------


def header_text(headers: Message, name: str) -> str | None:
    """The first ``name`` header as readable text, or None when absent.

    Works on the raw value, so it never trips over 8-bit bytes: they are read
    as UTF-8 (or Windows-1252 if they are not UTF-8). Folding is undone,
    RFC 2047 encoded words are decoded, and surrounding whitespace is removed.
    """
    wanted = name.lower()
    for key, value in headers.raw_items():
        if key.lower() == wanted:
            return decode_header_text(value if isinstance(value, str) else str(value))
    return None


def decode_header_text(value: str) -> str:
    """Turn a raw header value (possibly surrogate-escaped bytes) into text."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", "replace")
    text = re.sub(r"\r?\n(?=[ \t])", "", text)
    if "=?" in text:
        text = _decode_encoded_words(text)
    return text.strip()


def _decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded words; a word that will not decode is left as is."""
    text = _SPACE_BETWEEN_WORDS.sub(r"\1", text)  # whitespace between words is not text

    def decode(match: re.Match[str]) -> str:
        charset, kind, payload = match.group(1), match.group(2).lower(), match.group(3)
        charset = charset.split("*", 1)[0]  # RFC 2231 language suffix
        try:
            if kind == "q":
                data = binascii.a2b_qp(payload.replace("_", " ").encode("ascii"), header=False)
            else:
                data = binascii.a2b_base64(payload.encode("ascii") + b"===")
            return data.decode(charset, "replace")
        except (ValueError, LookupError, binascii.Error, UnicodeEncodeError):
            return match.group(0)

    return _ENCODED_WORD.sub(decode, text)


def _boundary_of(headers: Message) -> bytes | None:
    """The boundary parameter as the exact bytes that appear in the body."""
    raw = None
    for key, value in headers.raw_items():
        if key.lower() == "content-type":
            raw = value if isinstance(value, str) else str(value)
            break
    if raw is None:
        return None
    boundary: str | None = None
    if raw.isascii():
        try:
            boundary = headers.get_boundary()
        except Exception:
            boundary = None
    if boundary is None:  # 8-bit or mangled: read the parameter by hand
        match = _BOUNDARY_PARAM.search(";" + re.sub(r"\r?\n[ \t]", " ", raw))
        if match:
            boundary = match.group(1) if match.group(1) is not None else match.group(2)
    if not boundary:
        return None
    return boundary.encode("utf-8", "surrogateescape")


# --- walking --------------------------------------------------------------------


@dataclass(frozen=True)
class _Delimiter:
    start: int  # the line break before "--boundary", or "--" itself at the region start
    line_end: int  # just after the delimiter line's line break
    closing: bool


def _iter_delimiters(handle: BinaryIO, start: int, end: int, boundary: bytes) -> Iterator[_Delimiter]:
    """Find the boundary delimiter lines in ``[start, end)`` in one streaming pass.

    A delimiter is ``--boundary`` at the start of a line, optionally followed
    by ``--`` (closing), optional spaces/tabs and the line break. Anything else
    after the boundary (e.g. a longer boundary of another level) is no match.
    Searching with ``bytearray.find`` keeps a 150 MB body fast to scan.
    """
    pattern = b"--" + boundary
    lookahead = len(pattern) + 2 + _MAX_PADDING + 2
    reader = _ChunkReader(handle, start, end)
    buf = bytearray()
    base = start
    search = 0
    eof = False
    while True:
        found = buf.find(pattern, search)
        if found >= 0 and (eof or len(buf) - found >= lookahead):
            delimiter = _match_delimiter(buf, base, start, found, len(pattern), eof)
            if delimiter is None:
                search = found + 1
                continue
            yield delimiter
            search = delimiter.line_end - base
            continue
        if eof:
            return
        if found < 0:
            search = max(search, len(buf) - len(pattern) + 1)
        else:
            search = found
        cut = max(0, search - 2)  # keep two bytes of look-behind for the CRLF
        del buf[:cut]
        base += cut
        search -= cut
        chunk = reader.read()
        if chunk:
            buf += chunk
        else:
            eof = True


def _match_delimiter(
    buf: bytearray, base: int, region_start: int, found: int, length: int, eof: bool
) -> _Delimiter | None:
    """Check that the pattern at ``found`` is a whole delimiter line."""
    at = base + found
    if at == region_start:
        begin = at
    elif found >= 1 and buf[found - 1] == 0x0A:
        begin = at - 1
        if found >= 2 and buf[found - 2] == 0x0D:
            begin -= 1
    else:
        return None
    tail = found + length
    closing = buf[tail : tail + 2] == b"--"
    if closing:
        tail += 2
    stop = tail
    while stop < len(buf) and buf[stop] in (0x20, 0x09) and stop - tail < _MAX_PADDING:
        stop += 1
    if stop >= len(buf):
        return _Delimiter(begin, base + stop, closing) if eof else None
    if buf[stop] == 0x0A:
        return _Delimiter(begin, base + stop + 1, closing)
    if buf[stop] == 0x0D:
        if stop + 1 < len(buf) and buf[stop + 1] == 0x0A:
            return _Delimiter(begin, base + stop + 2, closing)
        if stop + 1 == len(buf) and eof:
            return _Delimiter(begin, base + stop + 1, closing)
    return None


def _child_ranges(handle: BinaryIO, part: MimePart) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each body part of a multipart, lazily."""
    boundary = part.boundary
    if boundary is None:
        part.defects.append(
            f"The {part.content_type} part has no boundary parameter, so its parts cannot be told apart; "
            "it was not walked."
        )
        return
    previous: _Delimiter | None = None
    for delimiter in _iter_delimiters(handle, part.body_start, part.body_end, boundary):
        if previous is not None:
            yield previous.line_end, max(previous.line_end, delimiter.start)
        if delimiter.closing:
            if previous is None:
                part.defects.append(f"The {part.content_type} part has a closing boundary but no parts.")
            return
        previous = delimiter
    if previous is None:
        part.defects.append(f"The {part.content_type} part contains no boundary line, so it has no readable parts.")
        return
    part.defects.append(
        f"The {part.content_type} part has no closing boundary (the message may be truncated); "
        "its last part was taken to run to the end."
    )
    yield previous.line_end, part.body_end


def _make_part(
    handle: BinaryIO,
    source: Source,
    start: int,
    end: int,
    *,
    depth: int,
    index: tuple[int, ...],
    parent: MimePart | None,
    default_type: str,
    header_limit: int,
) -> MimePart:
    """Read a part's header block and locate its body."""
    reader = _ChunkReader(handle, start, end)
    data, body_start, defects = _scan_header_block(reader, start, header_limit)
    headers, parse_defects = _parse_header_bytes(data)
    headers.set_default_type(default_type)
    try:
        content_type = headers.get_content_type()
    except Exception:
        content_type = default_type
        parse_defects.append("The Content-Type header could not be understood; the default type was assumed.")
    body_start = end if body_start is None else body_start
    return MimePart(
        headers=headers,
        start=start,
        end=end,
        body_start=body_start,
        body_end=end,
        content_type=content_type,
        depth=depth,
        index=index,
        parent=parent,
        defects=defects + parse_defects,
        source=source,
    )


@dataclass(frozen=True)
class _WalkOptions:
    header_limit: int
    max_depth: int
    descend: Callable[[MimePart], bool] | None


def _walk(handle: BinaryIO, source: Source, part: MimePart, options: _WalkOptions) -> Iterator[MimePart]:
    """Yield ``part`` and then, depth-first, everything inside it."""
    yield part
    if not (part.is_multipart or part.is_message):
        return
    if options.descend is not None and not options.descend(part):
        return
    if part.depth >= options.max_depth:
        part.defects.append(
            f"The MIME structure is nested deeper than {options.max_depth} levels; the rest was not walked."
        )
        return
    for number, (start, end) in enumerate(_inner_ranges(handle, part)):
        child = _make_part(
            handle,
            source,
            start,
            end,
            depth=part.depth + 1,
            index=part.index + (number,),
            parent=part,
            default_type="message/rfc822" if part.content_type == "multipart/digest" else "text/plain",
            header_limit=options.header_limit,
        )
        yield from _walk(handle, source, child, options)


def _inner_ranges(handle: BinaryIO, part: MimePart) -> Iterator[tuple[int, int]]:
    """The byte ranges directly inside a multipart or message/rfc822 part."""
    if part.is_multipart:
        yield from _child_ranges(handle, part)
        return
    if part.transfer_encoding not in IDENTITY_ENCODINGS:
        part.defects.append(
            f"The attached message is encoded as {part.transfer_encoding}, so it cannot be walked in place; "
            "decode its body with iter_body() to read it."
        )
        return
    yield part.body_start, part.body_end


def iter_parts(
    source: Source,
    *,
    header_limit: int = HEADER_LIMIT,
    max_depth: int = MAX_DEPTH,
    descend: Callable[[MimePart], bool] | None = None,
) -> Iterator[MimePart]:
    """Walk a message's MIME tree depth-first, streaming from the file.

    The first part yielded is the message itself (``index == ()``). Then,
    recursively: each body part of a ``multipart/*``, and for a
    ``message/rfc822`` part the message it encapsulates (a part whose
    ``parent`` is the rfc822 part, at the same offsets as its body). An
    rfc822 part whose body is base64 or quoted-printable encoded is not
    walked into (a defect says so).

    ``descend(part)`` is asked, after ``part`` has been yielded, whether to
    walk inside it; returning False skips its subtree without reading it.
    The walk is lazy: stop iterating (or close the iterator) and nothing more
    is read. Offsets are absolute positions in the file (a file object is
    walked from offset 0 and must be seekable).

    Raises :class:`MimeError` only when the source cannot be read.
    """
    options = _WalkOptions(header_limit, max_depth, descend)
    with _open(source) as handle:
        try:
            root = _make_part(
                handle,
                source,
                0,
                _file_size(handle),
                depth=0,
                index=(),
                parent=None,
                default_type="text/plain",
                header_limit=header_limit,
            )
            yield from _walk(handle, source, root, options)
        except MimeError:
            raise
        except Exception as error:  # the contract: only MimeError leaves this module
            raise MimeError(f"The MIME walker failed unexpectedly on this message: {error!r}.") from error


# --- bodies ------------------------------------------------------------------------


def iter_body(part: MimePart, *, decode: bool = True, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Stream a part's body in chunks, decoded from its transfer encoding.

    quoted-printable and base64 are decoded; 7bit, 8bit, binary and unknown
    encodings are passed through unchanged (so is everything with
    ``decode=False``). Damaged base64 is decoded as far as it makes sense.
    The part's ``source`` is read again (a path is reopened).
    """
    if part.source is None:
        raise MimeError("This part does not know which file it came from, so its body cannot be read.")
    with _open(part.source) as handle:
        chunks = _raw_chunks(handle, part.body_start, part.body_end, chunk_size)
        encoding = part.transfer_encoding
        if not decode:
            yield from chunks
        elif encoding == "base64":
            yield from _decode_base64(chunks)
        elif encoding == "quoted-printable":
            yield from _decode_quoted_printable(chunks)
        else:
            yield from chunks


def read_body(part: MimePart, limit: int) -> bytes:
    """Return at most ``limit`` bytes of a part's decoded body.

    Reading stops once ``limit`` bytes are decoded, so memory is bounded by
    ``limit``, not by the size of the part. To tell whether the body was cut,
    ask for one byte more than you need and compare lengths.
    """
    collected: list[bytes] = []
    size = 0
    body = iter_body(part)
    try:
        for chunk in body:
            collected.append(chunk[: limit - size])
            size += len(collected[-1])
            if size >= limit:
                break
    finally:
        body.close()
    return b"".join(collected)


def _raw_chunks(handle: BinaryIO, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
    reader = _ChunkReader(handle, start, end, chunk_size)
    while chunk := reader.read():
        yield chunk


def _decode_base64(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decode base64 leniently: ignore non-alphabet bytes, tolerate bad padding."""
    pending = b""
    for chunk in chunks:
        data = pending + chunk.translate(None, _BASE64_JUNK)
        whole = len(data) - len(data) % 4
        if whole:
            yield binascii.a2b_base64(data[:whole])
        pending = data[whole:]
    if len(pending) >= 2:  # a final group of 2-3 characters lost its padding
        yield binascii.a2b_base64(pending + b"=" * (4 - len(pending)))


def _decode_quoted_printable(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decode quoted-printable, cutting only at line ends so no escape is split."""
    pending = b""
    for chunk in chunks:
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < _QP_MAX_PENDING:
                pending = data
                continue
            cut = len(data) - 2
            escape = data.find(b"=", cut - 2, cut)  # an "=XX" that the cut would split
            if escape >= 0:
                cut = escape
        yield binascii.a2b_qp(data[:cut])
        pending = data[cut:]
    if pending:
        yield binascii.a2b_qp(pending)
