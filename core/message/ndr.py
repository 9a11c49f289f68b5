"""Unwrap journal reports that come back inside non-delivery reports.

When Office 365 cannot deliver a journal report it sends a non-delivery report
(NDR, ``multipart/report``) to the undeliverable journal mailbox, with the
journal report attached as a ``message/rfc822`` part. The ``imap_failover``
connection pulls that mailbox and must archive the journal report as if it had
arrived by SMTP, byte for byte. Operators sometimes forward such NDRs, which
wraps them once more; this module looks through a few such layers.

The report is found where an NDR carries it: a ``message/rfc822`` part
directly inside a ``multipart/report``, whose encapsulated message has journal
report headers (see :func:`mailpipe.message.journal.journal_format`). A journal report
merely attached to an ordinary message is not an NDR and is not unwrapped.

Two ways to get it out:

* :func:`find_wrapped_journal_report` gives the byte range of the report in the
  file, so callers can slice (or ``sendfile``) it without copying it into
  memory. That only works when the rfc822 part is not transfer-encoded. When it
  is (base64; or, against RFC 2046, quoted-printable) the bytes in the file are
  not the report, so the function returns None.
* :func:`extract_wrapped_journal_report` writes the report to a file object in
  every case, decoding a transfer-encoded part as a stream.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

from mailpipe.message.journal import journal_format
from mailpipe.message.mime import (
    CHUNK_SIZE,
    HEADER_LIMIT,
    IDENTITY_ENCODINGS,
    MimePart,
    iter_body,
    iter_parts,
    read_body,
    read_headers,
)

__all__ = ["MAX_NESTING", "extract_wrapped_journal_report", "find_wrapped_journal_report"]

#: How many attached messages deep to look (NDR inside a forward inside ...).
MAX_NESTING = 4


@dataclass(frozen=True)
class _Wrapped:
    wrapper: MimePart  # the message/rfc822 part of the NDR
    sliceable: bool  # its body bytes are the report itself


def find_wrapped_journal_report(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Byte range ``(start, end)`` of the journal report attached to an NDR.

    ``data[start:end]`` is the attached message exactly as attached. Returns
    None when the message is not an NDR carrying a journal report, and also
    when the report is there but transfer-encoded (base64), because then no
    byte range of the file holds it: use
    :func:`extract_wrapped_journal_report` for that case.

    Raises :class:`mailpipe.message.mime.MimeError` if the file cannot be read.
    """
    found = _locate(path)
    if found is None or not found.sliceable:
        return None
    return found.wrapper.body_start, found.wrapper.body_end


def extract_wrapped_journal_report(path: str | os.PathLike[str], dest: BinaryIO) -> bool:
    """Write the journal report attached to an NDR to ``dest``; False if none.

    Handles every transfer encoding of the attachment: an identity-encoded
    one is copied from the file, a base64 one decoded as a stream. Memory use
    does not grow with the size of the report.

    Raises :class:`mailpipe.message.mime.MimeError` if the file cannot be read.
    """
    found = _locate(path)
    if found is None:
        return False
    for chunk in iter_body(found.wrapper, decode=not found.sliceable, chunk_size=CHUNK_SIZE):
        dest.write(chunk)
    return True


def _locate(path: str | os.PathLike[str]) -> _Wrapped | None:
    """Walk the message and return the first journal report an NDR carries."""
    walk = iter_parts(path, descend=_within_nesting)
    try:
        for part in walk:
            if _is_ndr_attachment(part.parent) and journal_format(part.headers):
                assert part.parent is not None  # checked by _is_ndr_attachment
                return _Wrapped(part.parent, sliceable=True)
            if _is_ndr_attachment(part) and part.transfer_encoding not in IDENTITY_ENCODINGS:
                if _encoded_report(part):
                    return _Wrapped(part, sliceable=False)
        return None
    finally:
        walk.close()


def _is_ndr_attachment(part: MimePart | None) -> bool:
    """A message/rfc822 part directly inside a multipart/report."""
    return (
        part is not None
        and part.is_message
        and part.parent is not None
        and part.parent.content_type == "multipart/report"
    )


def _within_nesting(part: MimePart) -> bool:
    """Descend into attached messages only up to MAX_NESTING levels."""
    if not part.is_message:
        return True
    depth = 0
    node: MimePart | None = part
    while node is not None:
        depth += node.is_message
        node = node.parent
    return depth <= MAX_NESTING


def _encoded_report(part: MimePart) -> bool:
    """Whether a transfer-encoded rfc822 part holds a journal report.

    Only the start of the body is decoded: enough for the header block.
    """
    head = read_body(part, HEADER_LIMIT)
    return journal_format(read_headers(io.BytesIO(head))) is not None
