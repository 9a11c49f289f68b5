"""Builders of journal reports and non-delivery reports, for tests.

They follow Microsoft's published envelope-journaling format ("Journaling in
Exchange Server", section "Journal reports", on learn.microsoft.com) and return whole RFC 5322 messages as ``bytes`` with CRLF
line endings; pass the result through :func:`to_lf` for a bare-LF variant.
Output is deterministic: boundaries and Message-IDs are derived from a hash of
the content, so they never occur inside it.

Typical use::

    from tests.support.journal_samples import build_exchange_report, build_ndr

    report = build_exchange_report("alice@contoso.com",
                                   [("To", "bob@contoso.com"), ("Bcc", "carol@fabrikam.com")])
    ndr = build_ndr(report)                 # what the undeliverable mailbox receives
    forwarded = build_ndr(report, forwarded=True, cte="base64")

A recipient is a tuple ``(kind, address)`` with kind ``"To"``, ``"Cc"``,
``"Bcc"`` or ``"Recipient"``, optionally followed by ``"Expanded", dl_address``
or ``"Forwarded", original_address``: ``("To", "c@x", "Expanded", "dl@x")``
becomes the report line ``To: c@x, Expanded: dl@x``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from email.header import Header

__all__ = [
    "DEFAULT_RECIPIENTS",
    "build_exchange2003_report",
    "build_exchange_report",
    "build_ndr",
    "build_original",
    "build_report_around_text",
    "report_lines",
    "to_lf",
]

CRLF = b"\r\n"
DATE = "Mon, 15 Jan 2024 10:30:00 +0000"
JOURNAL_ADDRESS = "journal-7f3a@journal.example.net"

#: The envelope used when a test does not care: every kind and both notes.
DEFAULT_RECIPIENTS: tuple[tuple[str, ...], ...] = (
    ("To", "a@x"),
    ("Bcc", "b@x"),
    ("To", "c@x", "Expanded", "dl@x"),
    ("Recipient", "d@x", "Forwarded", "e@x"),
)


def to_lf(message: bytes) -> bytes:
    """The same message with bare LF line endings (as some stores keep mail)."""
    return message.replace(CRLF, b"\n")


def build_original(
    sender: str = "alice@contoso.com",
    to: Sequence[str] = ("a@x",),
    subject: str = "Quarterly figures",
    message_id: str = "<original-1@contoso.com>",
    body: bytes = b"Hello,\r\n\r\nthe figures are attached.\r\n",
) -> bytes:
    """A plain text message, the kind of mail that gets journaled."""
    headers = [
        ("From", sender),
        ("To", ", ".join(to)),
        ("Subject", _encode_header(subject)),
        ("Date", DATE),
        ("Message-ID", message_id),
        ("MIME-Version", "1.0"),
        ("Content-Type", 'text/plain; charset="utf-8"'),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    return _header_block(headers) + body


def report_lines(
    sender: str,
    recipients: Sequence[tuple[str, ...]],
    subject: str,
    message_id: str,
    on_behalf_of: str | None = None,
    message_id_label: str = "Message-ID",
) -> list[str]:
    """The envelope lines of an Exchange 2007+ / Office 365 report, in order."""
    lines = [f"Sender: {sender}"]
    if on_behalf_of is not None:
        lines.append(f"On-Behalf-Of: {on_behalf_of}")
    lines += [f"Subject: {subject}", f"{message_id_label}: {message_id}"]
    lines += [_recipient_line(recipient) for recipient in recipients]
    return lines


def build_exchange_report(
    sender: str = "alice@contoso.com",
    recipients: Sequence[tuple[str, ...]] = DEFAULT_RECIPIENTS,
    subject: str = "Quarterly figures",
    message_id: str = "<original-1@contoso.com>",
    on_behalf_of: str | None = None,
    encoding: str = "7bit",
    original: bytes | None = None,
    *,
    message_id_label: str = "Message-ID",
) -> bytes:
    """An Exchange 2007+ / Office 365 envelope journal report.

    ``encoding`` is the transfer encoding of the envelope text part:
    ``"7bit"``, ``"8bit"``, ``"quoted-printable"`` or ``"base64"`` (``"7bit"``
    with non-ASCII text is written as ``"8bit"``, raw UTF-8). ``original`` is
    the journaled message, attached unaltered; by default one is built from
    the other arguments. ``message_id_label`` lets a test write
    ``Message-Id`` instead of ``Message-ID``.
    """
    text = "\r\n".join(report_lines(sender, recipients, subject, message_id, on_behalf_of, message_id_label))
    if original is None:
        to = [r[1] for r in recipients if r[0] in ("To", "Cc")] or ["undisclosed-recipients:;"]
        original = build_original(sender, to, subject, message_id)
    return build_report_around_text(
        text + "\r\n", encoding=encoding, original=original, subject=subject, marker=("X-MS-Journal-Report", "")
    )


def build_exchange2003_report(
    sender: str = "alice@contoso.com",
    recipients: Sequence[str | tuple[str, ...]] = ("a@x", "b@x"),
    subject: str = "Quarterly figures",
    message_id: str = "<original-1@contoso.com>",
    encoding: str = "7bit",
    original: bytes | None = None,
    *,
    misspelt: bool = False,
) -> bytes:
    """An Exchange 2003 envelope journal report.

    Marked with ``Content-Identifier: ExJournalReport``, or with the
    ``Content-Identifer`` spelling some Exchange 2003 versions used when
    ``misspelt`` is true. Plain-string recipients are listed together on one
    ``Recipients: a@x, b@x`` line; tuple recipients get their own line as in
    :func:`build_exchange_report`.
    """
    lines = [f"Sender: {sender}", f"Subject: {subject}", f"Message-ID: {message_id}"]
    plain = [r for r in recipients if isinstance(r, str)]
    if plain:
        lines.append("Recipients: " + ", ".join(plain))
    lines += [_recipient_line(r) for r in recipients if not isinstance(r, str)]
    if original is None:
        original = build_original(sender, plain or ["a@x"], subject, message_id)
    marker = ("Content-Identifer" if misspelt else "Content-Identifier", "ExJournalReport")
    return build_report_around_text(
        "\r\n".join(lines) + "\r\n", encoding=encoding, original=original, subject=subject, marker=marker
    )


def build_report_around_text(
    text: str | bytes,
    *,
    encoding: str = "7bit",
    original: bytes | None = None,
    subject: str = "Quarterly figures",
    marker: tuple[str, str] | None = ("X-MS-Journal-Report", ""),
    charset: str = "utf-8",
) -> bytes:
    """A journal report whose envelope part holds exactly ``text``.

    For tests of odd or damaged envelopes. ``marker`` is the header that
    makes it a report (None: no marker, so not a report); ``original=None``
    attaches a small message, ``original=b""`` attaches nothing.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    if original is None:
        original = build_original()
    text_part = _text_part(data, encoding, charset)
    parts = [text_part]
    if original:
        parts.append(_rfc822_part(original, "7bit", "original.eml"))
    headers = [
        ("From", "Microsoft Exchange <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.com>"),
        ("To", JOURNAL_ADDRESS),
        ("Subject", _encode_header(subject)),
        ("Date", DATE),
        ("Message-ID", _generated_id(b"".join(parts), "journal")),
        ("MIME-Version", "1.0"),
    ]
    if marker is not None:
        headers.append(marker)
    return _multipart(headers, "mixed", parts)


def build_ndr(wrapped: bytes, forwarded: bool = False, cte: str = "7bit") -> bytes:
    """A non-delivery report (``multipart/report``) carrying ``wrapped``.

    ``wrapped`` (a journal report, usually) is attached as ``message/rfc822``
    with the transfer encoding ``cte``: ``"7bit"``/``"8bit"``/``"binary"``
    attach it unaltered (``"7bit"`` is labelled ``"8bit"`` when the message
    has 8-bit bytes), ``"base64"`` encodes it. With ``forwarded`` the NDR
    is itself attached (unaltered) to a message forwarding it, as an operator
    forwarding the undeliverable mailbox's mail would do.
    """
    human = _text_part(
        b"Delivery has failed to these recipients or groups:\r\n\r\n"
        + JOURNAL_ADDRESS.encode()
        + b"\r\nThe recipient's mailbox is full.\r\n",
        "7bit",
        "us-ascii",
    )
    status = _header_block([("Content-Type", "message/delivery-status")]) + (
        b"Reporting-MTA: dns; mail.contoso.com\r\n\r\n"
        b"Final-Recipient: rfc822; " + JOURNAL_ADDRESS.encode() + b"\r\n"
        b"Action: failed\r\nStatus: 5.2.2\r\n"
    )
    parts = [human, status, _rfc822_part(wrapped, cte, "journal-report.eml")]
    headers = [
        ("From", "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.com>"),
        ("To", "undeliverable-journal@contoso.com"),
        ("Subject", "Undeliverable: Quarterly figures"),
        ("Date", DATE),
        ("Message-ID", _generated_id(b"".join(parts), "ndr")),
        ("MIME-Version", "1.0"),
    ]
    ndr = _multipart(headers, "report", parts, params='; report-type="delivery-status"')
    if not forwarded:
        return ndr
    note = _text_part(b"Please see the attached undeliverable report.\r\n", "7bit", "us-ascii")
    parts = [note, _rfc822_part(ndr, "7bit", "undeliverable.eml")]
    headers = [
        ("From", "Operator <postmaster@contoso.com>"),
        ("To", "archive-admin@contoso.com"),
        ("Subject", "Fw: Undeliverable: Quarterly figures"),
        ("Date", DATE),
        ("Message-ID", _generated_id(b"".join(parts), "fw")),
        ("MIME-Version", "1.0"),
    ]
    return _multipart(headers, "mixed", parts)


# --- building blocks -----------------------------------------------------------


def _recipient_line(recipient: tuple[str, ...]) -> str:
    kind, address, *notes = recipient
    line = f"{kind}: {address}"
    for label, value in zip(notes[::2], notes[1::2]):
        line += f", {label}: {value}"
    return line


def _encode_header(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode()


def _header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"{name}: {value}".rstrip() if value else f"{name}:" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _text_part(data: bytes, encoding: str, charset: str) -> bytes:
    if encoding == "7bit" and not data.isascii():
        encoding = "8bit"
    if encoding == "quoted-printable":
        body = binascii.b2a_qp(data).replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    elif encoding == "base64":
        body = _base64_lines(data)
    elif encoding in ("7bit", "8bit"):
        body = data
    else:
        raise ValueError(f"unknown transfer encoding {encoding!r}")
    headers = [("Content-Type", f'text/plain; charset="{charset}"'), ("Content-Transfer-Encoding", encoding)]
    return _header_block(headers) + body


def _rfc822_part(message: bytes, cte: str, filename: str) -> bytes:
    headers = [("Content-Type", "message/rfc822")]
    if cte == "7bit" and not message.isascii():
        cte = "8bit"
    if cte == "base64":
        body = _base64_lines(message)
    elif cte in ("7bit", "8bit", "binary"):
        body = message
    else:
        raise ValueError(f"unknown transfer encoding {cte!r}")
    headers += [("Content-Transfer-Encoding", cte), ("Content-Disposition", f'attachment; filename="{filename}"')]
    return _header_block(headers) + body


def _base64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _multipart(headers: list[tuple[str, str]], subtype: str, parts: list[bytes], params: str = "") -> bytes:
    """Assemble a multipart: the CRLF before each delimiter belongs to it (RFC 2046)."""
    boundary = "=_mp_" + hashlib.sha256(b"".join(parts)).hexdigest()[:32]
    headers = headers + [("Content-Type", f'multipart/{subtype}; boundary="{boundary}"{params}')]
    delimiter = b"--" + boundary.encode()
    pieces = [_header_block(headers), b"This is a multi-part message in MIME format.\r\n"]
    for part in parts:
        pieces += [CRLF, delimiter, CRLF, part]
    pieces += [CRLF, delimiter, b"--", CRLF]
    return b"".join(pieces)


def _generated_id(content: bytes, kind: str) -> str:
    return f"<{kind}-{hashlib.sha256(content).hexdigest()[:24]}@contoso.com>"
