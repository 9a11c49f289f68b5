"""Envelope facts from Exchange / Office 365 journal reports.

A journal report is an outer message that Exchange wraps around a journaled
message. Its ``text/plain`` part holds the *envelope*: who really sent the
message and to whom it was really delivered, including Bcc recipients and the
members of expanded distribution lists. The envelope is recorded nowhere
else, so the pipeline stores what this module parses beside the archived
bytes. The format is the one Microsoft publishes ("Journaling in Exchange
Server", section "Journal reports", on learn.microsoft.com).

Exchange 2007+ and Office 365 mark reports with an ``X-MS-Journal-Report:``
header (its value is empty: presence is what counts); Exchange 2003 marked
them with ``Content-Identifier: ExJournalReport`` (some versions misspelt it
``Content-Identifer``). Both put one ``Field: value`` per line in the text
part, so one parser handles both.

Parsing is best effort: the bytes are the evidence, so a damaged report yields
a result with what could be read and sentences in ``warnings``. It never
raises once a message is known to be a report, and it never reads the
attached original's body into memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from email.message import Message
from typing import Any

from mailpipe.common.small_files import read_small_file
from mailpipe.message.mime import MimeError, MimePart, decode_header_text, header_text, iter_parts, read_body

__all__ = ["MAX_REPORT_TEXT", "journal_format", "parse_journal_report"]

#: At most this many bytes of the report's text part are read and parsed.
MAX_REPORT_TEXT = 4 * 1024 * 1024

_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9-]*)\s*:(.*)$")
_NOTE = re.compile(r"(?i)^(expanded|forwarded)\s*:\s*(.*)$")
_SINGLE_FIELDS = {
    "sender": "sender",
    "on-behalf-of": "on_behalf_of",
    "subject": "subject",
    "message-id": "message_id",
}
_LABELS = {"sender": "Sender", "on-behalf-of": "On-Behalf-Of", "subject": "Subject", "message-id": "Message-ID"}
_RECIPIENT_KINDS = {"to": "To", "cc": "Cc", "bcc": "Bcc", "recipient": "Recipient", "recipients": "Recipient"}
_EXAMPLE_LENGTH = 80
# Damage is reported for this many top-level parts at most, to bound memory.
_MAX_PARTS_CHECKED = 100
#: A report has three or four parts; a "report" with thousands is damage or an
#: attack, and walking all of them (a header parse each) held the pipeline for
#: 46 s on a 35 MB message of empty parts. Past this many the walk stops and
#: the facts are marked partial; the bytes are archived whole regardless.
MAX_PARTS_WALKED = 1000


def journal_format(headers: Message) -> str | None:
    """Which kind of journal report a header block marks, if any.

    Returns ``"exchange2007"`` (Exchange 2007 and later, Office 365),
    ``"exchange2003"`` or None. Only headers are looked at, so the body of a
    message that is not a report is never read.
    """
    names = {key.lower() for key in headers.keys()}
    if "x-ms-journal-report" in names:
        return "exchange2007"
    for name in ("content-identifier", "content-identifer"):
        value = header_text(headers, name)
        if value is not None and value.strip().lower() == "exjournalreport":
            return "exchange2003"
    return None


#: Bytes read to decide cheaply that a message is not a journal report.
QUICK_LOOK_BYTES = 64 * 1024
_REPORT_HEADER_NAMES = (b"x-ms-journal-report", b"content-identif")


def _may_be_a_report(path: str | os.PathLike[str]) -> bool:
    """False when the whole header block is in the first ``QUICK_LOOK_BYTES``
    and names neither report header: most mail that is not a report is then
    never given to the MIME parser. True when in doubt (a long header block,
    or a file that cannot be read: the full parse reports that)."""
    try:
        head = read_small_file(os.fspath(path), QUICK_LOOK_BYTES)
    except OSError:
        return True
    ends = [end for end in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if end >= 0]
    if not ends and len(head) == QUICK_LOOK_BYTES:
        return True
    # No blank line in a short file: all of it is header.
    block = head[: min(ends)] if ends else head
    lowered = block.lower()
    return any(name in lowered for name in _REPORT_HEADER_NAMES)


def parse_journal_report(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Parse the envelope of a journal report stored at ``path``.

    Returns None when the message is not a journal report (decided from its
    top-level headers alone). Otherwise returns a JSON-serialisable dict::

        {"format": "exchange2007" | "exchange2003",
         "sender": str | None, "on_behalf_of": str | None,
         "subject": str | None, "message_id": str | None,
         "recipients": [{"address": str, "kind": "To" | "Cc" | "Bcc" | "Recipient",
                         "expanded": str | None, "forwarded": str | None}, ...],
         "original_attached": bool,
         "warnings": [str, ...]}

    ``expanded`` is the distribution list the recipient was expanded from,
    ``forwarded`` the address the message was originally sent to. Addresses
    are kept as written (``<>`` included), minus surrounding whitespace.

    A report that cannot be parsed still gives the dict, with what was found
    and a sentence per problem in ``warnings``. Raises
    :class:`mailpipe.message.mime.MimeError` only if the file cannot be opened or its
    headers cannot be read at all.
    """
    if not _may_be_a_report(path):
        return None
    walk = iter_parts(path, descend=lambda part: not part.is_message)
    try:
        root = next(walk)
        report_format = journal_format(root.headers)
        if report_format is None:
            return None
        report = _empty_report(report_format)
        try:
            _read_report(root, walk, report)
        except MimeError as error:
            report["warnings"].append(f"The journal report could not be read to the end: {error}")
        return report
    finally:
        walk.close()


def _empty_report(report_format: str) -> dict[str, Any]:
    return {
        "format": report_format,
        "sender": None,
        "on_behalf_of": None,
        "subject": None,
        "message_id": None,
        "recipients": [],
        "original_attached": False,
        "warnings": [],
    }


def _read_report(root: MimePart, walk: Iterator[MimePart], report: dict[str, Any]) -> None:
    """Find the envelope text and the attached original, then parse the text."""
    text_part, seen = _find_parts(root, walk, report)
    for part in seen:
        for defect in part.defects:
            _warn(report, f"The report's MIME structure is damaged: {defect}")
    if text_part is None:
        _warn(
            report,
            "The journal report has no text/plain part, so its envelope (sender and recipients) could not be read.",
        )
        return
    text = _report_text(text_part, report)
    if text is not None:
        _parse_report_text(text, report)


def _find_parts(
    root: MimePart, walk: Iterator[MimePart], report: dict[str, Any]
) -> tuple[MimePart | None, list[MimePart]]:
    """The first text/plain part outside the attached original; note the original.

    ``walk`` does not descend into message/rfc822 parts, so the original's
    own text is never mistaken for the envelope, nor read into memory. The
    top level is walked to its end (its boundaries must be scanned past the
    original anyway), so damage such as a missing closing boundary is seen.
    """
    if root.content_type == "text/plain":
        return root, [root]
    seen = [root]
    text_part = None
    for walked, part in enumerate(walk, start=2):
        if walked > MAX_PARTS_WALKED:
            report["partial"] = (
                f"the report has more than {MAX_PARTS_WALKED} MIME parts; only the first "
                f"{MAX_PARTS_WALKED} were read (a journal report has three or four)"
            )
            _warn(report, f"The journal report has more than {MAX_PARTS_WALKED} MIME parts; the rest were not read.")
            break
        if len(seen) < _MAX_PARTS_CHECKED:
            seen.append(part)
        if part.is_message:
            report["original_attached"] = True
        elif text_part is None and part.content_type == "text/plain":
            text_part = part
    return text_part, seen


def _report_text(part: MimePart, report: dict[str, Any]) -> str | None:
    """Decode the text part to str, bounded; say what went wrong, if anything."""
    data = read_body(part, MAX_REPORT_TEXT + 1)
    if len(data) > MAX_REPORT_TEXT:
        data = data[: data.rfind(b"\n", 0, MAX_REPORT_TEXT) + 1] or data[:MAX_REPORT_TEXT]
        _warn(report, f"The journal report text is longer than {MAX_REPORT_TEXT} bytes; only its beginning was read.")
    if not data.strip():
        _warn(report, "The journal report's text part is empty, so its envelope could not be read.")
        return None
    text = _decode_text(data, part.charset, report)
    if "\x00" in text:
        text = text.replace("\x00", "")
        _warn(report, "The journal report text contains NUL bytes; they were removed.")
    return text


def _decode_text(data: bytes, charset: str | None, report: dict[str, Any]) -> str:
    """Decode with the declared charset, then UTF-8; replace what neither fits.

    Reports often declare us-ascii yet carry raw UTF-8, hence the fallback.
    """
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    declared = f"in the declared charset {charset!r} nor " if charset else ""
    _warn(report, f"The journal report text is neither valid {declared}UTF-8; unreadable bytes were replaced.")
    return data.decode("utf-8", "replace")


def _parse_report_text(text: str, report: dict[str, Any]) -> None:
    """Fill ``report`` from the envelope text, one ``Field: value`` per line.

    Field names are matched without regard to case; unknown fields are
    ignored. Lines that are not ``Field: value`` at all are ignored too, and
    summarised in one warning.
    """
    odd_lines: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        match = _FIELD.match(line)
        if match is None:
            odd_lines.append(line.strip())
            continue
        name, value = match.group(1).lower(), match.group(2).strip()
        if name in _SINGLE_FIELDS:
            _set_single(report, name, value)
        elif name in _RECIPIENT_KINDS:
            _add_recipients(report, _RECIPIENT_KINDS[name], match.group(1), value)
    _finish(report, odd_lines)


def _set_single(report: dict[str, Any], name: str, value: str) -> None:
    key = _SINGLE_FIELDS[name]
    if name == "subject" and "=?" in value:
        value = decode_header_text(value)
    if report[key] is not None:
        _warn(report, f"The journal report text has more than one {_LABELS[name]}: line; the first one was kept.")
        return
    if not value and name == "subject":
        report[key] = ""  # a message may have no subject; that is not damage
        return
    if not value:
        _warn(report, f"The journal report text has an empty {_LABELS[name]}: line.")
        return
    report[key] = value


def _add_recipients(report: dict[str, Any], kind: str, label: str, value: str) -> None:
    """Add the recipients of one line: an address, then optional notes.

    ``To: c@x, Expanded: dl@x`` records that c@x received the message as a
    member of the list dl@x; ``Forwarded: e@x`` that it was addressed to e@x
    and forwarded. Further plain addresses on the line (Exchange 2003's
    ``Recipients: a@x, b@x``) are recipients of the same kind.
    """
    current: dict[str, Any] | None = None
    for token in _split_commas(value):
        token = token.strip()
        if not token:
            continue
        note = _NOTE.match(token)
        if note is None:
            current = {"address": token, "kind": kind, "expanded": None, "forwarded": None}
            report["recipients"].append(current)
            continue
        key, noted = note.group(1).lower(), note.group(2).strip()
        if current is None:
            _warn(
                report,
                f"A {label}: line has a {note.group(1)}: note but no address before it; the note was ignored.",
            )
        elif noted and current[key] is None:
            current[key] = noted
    if current is None and not any(token.strip() for token in _split_commas(value)):
        _warn(report, f"A {label}: line in the journal report text has no address; it was ignored.")


def _split_commas(value: str) -> list[str]:
    """Split on commas that are not inside quotes or angle brackets."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    angle = 0
    for char in value:
        if char == '"':
            quoted = not quoted
        elif char == "<" and not quoted:
            angle += 1
        elif char == ">" and not quoted and angle:
            angle -= 1
        elif char == "," and not quoted and not angle:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return pieces


def _finish(report: dict[str, Any], odd_lines: list[str]) -> None:
    """Warn about what a usable envelope must have and did not."""
    if odd_lines:
        example = odd_lines[0][:_EXAMPLE_LENGTH]
        _warn(
            report,
            f"{len(odd_lines)} line(s) of the journal report text are not 'Field: value' lines and were ignored, "
            f"for example {example!r}.",
        )
    if report["sender"] is None:
        _warn(report, "The journal report text has no Sender: line, so the envelope sender is unknown.")
    if not report["recipients"]:
        _warn(report, "The journal report text lists no recipients (no To:, Cc:, Bcc: or Recipient: lines).")


def _warn(report: dict[str, Any], sentence: str) -> None:
    if sentence not in report["warnings"]:
        report["warnings"].append(sentence)
