"""Journal report parsing: the envelope is the only record of Bcc and list members."""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.journal_samples import (
    build_exchange2003_report,
    build_exchange_report,
    build_original,
    build_report_around_text,
    to_lf,
)
from mailpipe.message import mime
from mailpipe.message.journal import MAX_REPORT_TEXT, journal_format, parse_journal_report
from mailpipe.message.mime import MimeError, read_headers

DEFAULT_ENVELOPE = [
    {"address": "a@x", "kind": "To", "expanded": None, "forwarded": None},
    {"address": "b@x", "kind": "Bcc", "expanded": None, "forwarded": None},
    {"address": "c@x", "kind": "To", "expanded": "dl@x", "forwarded": None},
    {"address": "d@x", "kind": "Recipient", "expanded": None, "forwarded": "e@x"},
]

Write = Callable[[bytes], Path]




def parse(write: Write, data: bytes) -> dict[str, Any] | None:
    """Parse and check the result is JSON-serialisable, as the spool needs."""
    result = parse_journal_report(write(data))
    json.dumps(result)
    return result


def report_of(write: Write, data: bytes) -> dict[str, Any]:
    result = parse(write, data)
    assert result is not None, "a message marked as a journal report must give a result"
    return result


# --- Exchange 2007+ / Office 365 ------------------------------------------------


def test_envelope_with_every_recipient_kind_and_note(write: Write) -> None:
    result = report_of(write, build_exchange_report("alice@contoso.com", subject="Quarterly figures"))
    assert result == {
        "format": "exchange2007",
        "sender": "alice@contoso.com",
        "on_behalf_of": None,
        "subject": "Quarterly figures",
        "message_id": "<original-1@contoso.com>",
        "recipients": DEFAULT_ENVELOPE,
        "original_attached": True,
        "warnings": [],
    }


def test_cc_recipients_are_kept_in_order(write: Write) -> None:
    recipients = [("Cc", "x@y"), ("To", "z@y"), ("Bcc", "hidden@y"), ("Cc", "w@y")]
    result = report_of(write, build_exchange_report(recipients=recipients))
    assert [(r["kind"], r["address"]) for r in result["recipients"]] == [(k, a) for k, a in recipients]


def test_on_behalf_of_is_recorded(write: Write) -> None:
    result = report_of(write, build_exchange_report("assistant@contoso.com", on_behalf_of="boss@contoso.com"))
    assert result["sender"] == "assistant@contoso.com"
    assert result["on_behalf_of"] == "boss@contoso.com"
    assert result["warnings"] == []


@pytest.mark.parametrize("label", ["Message-ID", "Message-Id", "message-id", "MESSAGE-ID"])
def test_message_id_field_name_in_any_case(write: Write, label: str) -> None:
    result = report_of(write, build_exchange_report(message_id="<m-42@contoso.com>", message_id_label=label))
    assert result["message_id"] == "<m-42@contoso.com>"


@pytest.mark.parametrize("encoding", ["7bit", "quoted-printable", "base64"])
def test_text_part_transfer_encodings(write: Write, encoding: str) -> None:
    result = report_of(write, build_exchange_report(encoding=encoding))
    assert result["sender"] == "alice@contoso.com"
    assert result["recipients"] == DEFAULT_ENVELOPE
    assert result["warnings"] == []


@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
def test_utf8_subject(write: Write, encoding: str) -> None:
    data = build_exchange_report(subject="Grüße aus Köln – 東京", encoding=encoding)
    if encoding == "8bit":
        assert "Subject: Grüße aus Köln".encode() in data  # really raw 8-bit in the part
    result = report_of(write, data)
    assert result["subject"] == "Grüße aus Köln – 東京"
    assert result["warnings"] == []


def test_encoded_word_subject_in_report_text_is_decoded(write: Write) -> None:
    result = report_of(write, build_exchange_report(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?b?IHNpZSE=?="))
    assert result["subject"] == "Grüße sie!"


def test_raw_utf8_in_a_part_declared_us_ascii(write: Write) -> None:
    text = "Sender: zoë@contoso.com\r\nSubject: Café\r\nTo: a@x\r\n".encode()
    result = report_of(write, build_report_around_text(text, encoding="8bit", charset="us-ascii"))
    assert (result["sender"], result["subject"]) == ("zoë@contoso.com", "Café")
    assert result["warnings"] == []


def test_bytes_that_are_not_utf8_are_replaced_with_a_warning(write: Write) -> None:
    text = b"Sender: alice@contoso.com\r\nSubject: caf\xe9 \xff\r\nTo: a@x\r\n"
    result = report_of(write, build_report_around_text(text, encoding="8bit"))
    assert result["sender"] == "alice@contoso.com"
    assert result["subject"] == "caf\ufffd \ufffd"
    assert any("UTF-8" in warning for warning in result["warnings"])


def test_bare_lf_line_endings(write: Write) -> None:
    for encoding in ("7bit", "quoted-printable", "base64"):
        data = to_lf(build_exchange_report(encoding=encoding, on_behalf_of="boss@contoso.com"))
        assert b"\r" not in data
        result = report_of(write, data)
        assert result["recipients"] == DEFAULT_ENVELOPE
        assert result["on_behalf_of"] == "boss@contoso.com"
        assert result["original_attached"] is True
        assert result["warnings"] == []


def test_whitespace_case_and_angle_brackets(write: Write) -> None:
    text = (
        "  SENDER :  <alice@contoso.com>  \r\n"
        "subject:Re: figures, final\t\r\n"
        "Message-Id:<m@x>\r\n"
        " to:  <a@x> ,  expanded:  <dl@x> \r\n"
        "CC:b@x,Forwarded:old@x\r\n"
        "recipient:   d@x   \r\n"
    )
    result = report_of(write, build_report_around_text(text))
    assert result["sender"] == "<alice@contoso.com>"
    assert result["subject"] == "Re: figures, final"
    assert result["message_id"] == "<m@x>"
    assert result["recipients"] == [
        {"address": "<a@x>", "kind": "To", "expanded": "<dl@x>", "forwarded": None},
        {"address": "b@x", "kind": "Cc", "expanded": None, "forwarded": "old@x"},
        {"address": "d@x", "kind": "Recipient", "expanded": None, "forwarded": None},
    ]
    assert result["warnings"] == []


def test_empty_subject_is_not_damage(write: Write) -> None:
    result = report_of(write, build_report_around_text("Sender: a@x\r\nSubject: \r\nTo: b@x\r\n"))
    assert result["subject"] == ""
    assert result["warnings"] == []


def test_unknown_fields_are_ignored_and_odd_lines_noted(write: Write) -> None:
    text = "Sender: a@x\r\nX-Future-Field: something\r\nthis line is not a field\r\nTo: b@x\r\n"
    result = report_of(write, build_report_around_text(text))
    assert result["sender"] == "a@x"
    assert [r["address"] for r in result["recipients"]] == ["b@x"]
    assert len(result["warnings"]) == 1
    assert "'this line is not a field'" in result["warnings"][0]


def test_note_without_address_and_empty_recipient_line_are_warned_about(write: Write) -> None:
    text = "Sender: a@x\r\nTo: \r\nBcc: Expanded: dl@x\r\nCc: c@x\r\n"
    result = report_of(write, build_report_around_text(text))
    assert [r["address"] for r in result["recipients"]] == ["c@x"]
    assert any("To: line" in warning and "no address" in warning for warning in result["warnings"])
    assert any("Expanded: note but no address" in warning for warning in result["warnings"])


def test_duplicate_sender_keeps_the_first(write: Write) -> None:
    result = report_of(write, build_report_around_text("Sender: first@x\r\nSender: second@x\r\nTo: b@x\r\n"))
    assert result["sender"] == "first@x"
    assert any("more than one Sender" in warning for warning in result["warnings"])


# --- Exchange 2003 --------------------------------------------------------------------


@pytest.mark.parametrize("misspelt", [False, True])
def test_exchange2003_report_with_either_spelling(write: Write, misspelt: bool) -> None:
    data = build_exchange2003_report("alice@contoso.com", ["a@x", "b@x", "<c@x>"], misspelt=misspelt)
    assert (b"Content-Identifer:" in data) is misspelt
    result = report_of(write, data)
    assert result["format"] == "exchange2003"
    assert result["sender"] == "alice@contoso.com"
    assert result["message_id"] == "<original-1@contoso.com>"
    assert [(r["kind"], r["address"]) for r in result["recipients"]] == [
        ("Recipient", "a@x"),
        ("Recipient", "b@x"),
        ("Recipient", "<c@x>"),
    ]
    assert result["original_attached"] is True
    assert result["warnings"] == []


def test_exchange2003_with_to_and_cc_lines(write: Write) -> None:
    data = build_exchange2003_report(recipients=[("To", "a@x"), ("Cc", "b@x")], encoding="quoted-printable")
    result = report_of(write, data)
    assert [(r["kind"], r["address"]) for r in result["recipients"]] == [("To", "a@x"), ("Cc", "b@x")]


def test_content_identifier_with_another_value_is_not_a_report(write: Write) -> None:
    data = build_report_around_text("Sender: a@x\r\n", marker=("Content-Identifier", "SomethingElse"))
    assert parse(write, data) is None


# --- not a report ---------------------------------------------------------------------------


def test_ordinary_message_is_not_a_report(write: Write) -> None:
    assert parse(write, build_original()) is None


def test_marker_in_the_body_does_not_count(write: Write) -> None:
    text = "X-MS-Journal-Report:\r\nContent-Identifier: ExJournalReport\r\nSender: a@x\r\n"
    assert parse(write, build_report_around_text(text, marker=None)) is None


def test_decision_reads_only_the_headers(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    data = build_original(body=b"x" * 76 + b"\r\n") + b"y" * (4 * 1024 * 1024)
    read = []
    original_read = mime._ChunkReader.read

    def counting_read(self: mime._ChunkReader) -> bytes:
        chunk = original_read(self)
        read.append(len(chunk))
        return chunk

    monkeypatch.setattr(mime._ChunkReader, "read", counting_read)
    assert parse(write, data) is None
    assert sum(read) <= mime.CHUNK_SIZE


def test_journal_format_from_headers() -> None:
    assert journal_format(read_headers(_stream(b"X-MS-Journal-Report:\r\n\r\n"))) == "exchange2007"
    assert journal_format(read_headers(_stream(b"x-ms-journal-report: \n\n"))) == "exchange2007"
    assert journal_format(read_headers(_stream(b"Content-Identifer:  exjournalreport \r\n\r\n"))) == "exchange2003"
    assert journal_format(read_headers(_stream(b"Subject: X-MS-Journal-Report:\r\n\r\n"))) is None


# --- broken reports: a result with warnings, never an exception -------------------------------


def test_report_without_text_part(write: Write) -> None:
    data = (
        b"X-MS-Journal-Report:\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + build_original() + b"\r\n--b1--\r\n"
    )
    result = report_of(write, data)
    assert result["sender"] is None
    assert result["recipients"] == []
    assert result["original_attached"] is True
    assert any("no text/plain part" in warning for warning in result["warnings"])


def test_text_of_the_attached_original_is_not_taken_for_the_envelope(write: Write) -> None:
    original = build_original(body=b"Sender: mallory@evil.example\r\nTo: nobody@x\r\n")
    data = (
        b"X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + original + b"\r\n--b1--\r\n"
    )
    result = report_of(write, data)
    assert result["sender"] is None


def test_report_with_headers_only(write: Write) -> None:
    result = report_of(write, b"X-MS-Journal-Report:\r\nSubject: nothing\r\n\r\n")
    assert result["original_attached"] is False
    assert any("empty" in warning for warning in result["warnings"])


def test_report_with_garbage_body(write: Write) -> None:
    garbage = random.Random(7).randbytes(200_000)
    data = b"X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n" + garbage
    result = report_of(write, data)
    assert result["sender"] is None
    assert result["warnings"]


def test_report_that_is_all_garbage(write: Write) -> None:
    garbage = random.Random(8).randbytes(50_000)
    result = report_of(write, b"X-MS-Journal-Report:\n" + garbage)
    assert result["format"] == "exchange2007"
    assert result["warnings"]


def test_undecodable_base64_text_part(write: Write) -> None:
    data = build_exchange_report(encoding="base64")
    start = data.index(b"Content-Transfer-Encoding: base64\r\n\r\n") + 38
    damaged = data[:start] + b"!!!!  \x00\xff not base64 at all ####" + data[data.index(b"\r\n--=_mp_", start) :]
    result = report_of(write, damaged)
    assert result["sender"] is None
    assert any("no Sender" in warning for warning in result["warnings"])


def test_multipart_without_boundary_parameter(write: Write) -> None:
    data = build_exchange_report().replace(b'; boundary="=_mp_', b'; x-other="=_mp_', 1)
    result = report_of(write, data)
    assert any("no boundary parameter" in warning for warning in result["warnings"])


def test_truncated_report_still_gives_the_envelope(write: Write) -> None:
    data = build_exchange_report()
    cut = data[: data.index(b"Hello,")]
    result = report_of(write, cut)
    assert result["sender"] == "alice@contoso.com"
    assert result["recipients"] == DEFAULT_ENVELOPE
    assert result["original_attached"] is True
    assert any("no closing boundary" in warning for warning in result["warnings"])


def test_nul_bytes_in_headers_and_text(write: Write) -> None:
    text = b"Sender: ali\x00ce@contoso.com\r\nSubject: a\x00b\r\n\x00\r\nTo: a@x\r\n"
    data = build_report_around_text(text, encoding="8bit")
    data = data.replace(b"MIME-Version: 1.0", b"X-Junk: \x00\x00 nul\r\nMIME-Version: 1.0", 1)
    result = report_of(write, data)
    assert result["sender"] == "alice@contoso.com"
    assert result["subject"] == "ab"
    assert any("NUL" in warning for warning in result["warnings"])


def test_raw_8bit_and_nul_in_top_level_headers(write: Write) -> None:
    data = build_exchange_report().replace(b"Subject: Quarterly figures", b"Subject: Gr\xc3\xbc\xff\x00e", 1)
    result = report_of(write, data)
    assert result["sender"] == "alice@contoso.com"


def test_any_truncation_gives_none_or_a_result(write: Write) -> None:
    data = to_lf(build_exchange_report(encoding="quoted-printable"))
    for cut in range(0, len(data), 23):
        result = parse(write, data[:cut])
        assert result is None or result["format"] == "exchange2007"


def test_text_part_is_read_only_up_to_the_limit(write: Write) -> None:
    filler = "Note: padding line that says nothing useful\r\n" * (MAX_REPORT_TEXT // 40)
    result = report_of(write, build_report_around_text("Sender: a@x\r\nTo: b@x\r\n" + filler + "Cc: late@x\r\n"))
    assert result["sender"] == "a@x"
    assert [r["address"] for r in result["recipients"]] == ["b@x"]
    assert any("longer than" in warning for warning in result["warnings"])


def test_missing_file_raises_mime_error(tmp_path: Path) -> None:
    with pytest.raises(MimeError, match="Cannot open"):
        parse_journal_report(tmp_path / "absent.eml")


# --- bounded memory ---------------------------------------------------------------------------------


def test_large_report_is_parsed_in_bounded_memory(write: Write) -> None:
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 2 + b"\r\n"
    original = build_original(body=line * (30 * 1024 * 1024 // len(line)))
    path = write(build_exchange_report(original=original, encoding="base64"))
    del original
    assert path.stat().st_size > 30 * 1024 * 1024

    tracemalloc.start()
    try:
        result = parse_journal_report(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result is not None
    assert result["recipients"] == DEFAULT_ENVELOPE
    assert result["original_attached"] is True
    assert result["warnings"] == []
    assert peak < 10 * 1024 * 1024, f"parsing used {peak} bytes at peak"


def _stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


# --- the quick look that spares plain mail the MIME parser ------------------------


def test_plain_mail_is_not_given_to_the_mime_parser(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailpipe.message import journal

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("plain mail reached the MIME parser")

    monkeypatch.setattr(journal, "iter_parts", refuse)
    assert parse(write, b"Subject: plain\r\nX-Content-Note: journal\r\n\r\nContent-Identifier: ExJournalReport\r\n") is None
    assert parse(write, to_lf(b"Subject: plain\r\n\r\nbody\r\n")) is None


@pytest.mark.parametrize("where", ["first", "after 70 KiB of headers"])
def test_report_header_anywhere_in_a_long_header_block_is_found(write: Write, where: str) -> None:
    report = build_exchange_report()
    if where != "first":
        padding = b"".join(b"X-Padding-%05d: %s\r\n" % (n, b"p" * 60) for n in range(1000))
        report = padding + report
    assert report_of(write, report)["format"] == "exchange2007"
