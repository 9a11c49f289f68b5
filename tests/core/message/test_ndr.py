"""Unwrapping journal reports from non-delivery reports, byte for byte.

The second half tests the streaming MIME walker those offsets come from.
"""

from __future__ import annotations

import base64
import binascii
import io
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.journal_samples import (
    build_exchange2003_report,
    build_exchange_report,
    build_ndr,
    build_original,
    to_lf,
)
from mailpipe.message.mime import MimeError, iter_body, iter_parts, read_body, read_headers
from mailpipe.message.ndr import extract_wrapped_journal_report, find_wrapped_journal_report

Write = Callable[[bytes], Path]




def sliced(path: Path) -> bytes | None:
    span = find_wrapped_journal_report(path)
    if span is None:
        return None
    start, end = span
    return path.read_bytes()[start:end]


def extracted(path: Path) -> bytes | None:
    out = io.BytesIO()
    return out.getvalue() if extract_wrapped_journal_report(path, out) else None


# --- finding the report ---------------------------------------------------------


@pytest.mark.parametrize("forwarded", [False, True])
def test_report_in_ndr_is_found_byte_for_byte(write: Write, forwarded: bool) -> None:
    report = build_exchange_report(subject="Grüße", encoding="quoted-printable")
    path = write(build_ndr(report, forwarded=forwarded))
    assert sliced(path) == report
    assert extracted(path) == report


def test_exchange2003_report_in_ndr(write: Write) -> None:
    report = build_exchange2003_report(misspelt=True)
    assert sliced(write(build_ndr(report))) == report


def test_bare_lf_ndr(write: Write) -> None:
    report = to_lf(build_exchange_report())
    ndr = to_lf(build_ndr(build_exchange_report(), forwarded=True))
    assert sliced(write(ndr)) == report


def test_report_without_final_newline_is_still_exact(write: Write) -> None:
    report = build_exchange_report().rstrip(b"\r\n")
    assert sliced(write(build_ndr(report))) == report


@pytest.mark.parametrize("forwarded", [False, True])
def test_base64_attachment_cannot_be_sliced_but_can_be_extracted(write: Write, forwarded: bool) -> None:
    report = build_exchange_report(on_behalf_of="boss@contoso.com")
    path = write(build_ndr(report, forwarded=forwarded, cte="base64"))
    assert find_wrapped_journal_report(path) is None
    assert extracted(path) == report


def test_base64_attachment_that_is_not_a_report(write: Write) -> None:
    assert extracted(write(build_ndr(build_original(), cte="base64"))) is None


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(build_original(), id="ordinary-message"),
        pytest.param(build_exchange_report(), id="journal-report-itself"),
        pytest.param(build_ndr(build_original()), id="ndr-of-ordinary-mail"),
        pytest.param(build_ndr(build_original(), forwarded=True), id="forwarded-ndr-of-ordinary-mail"),
    ],
)
def test_non_ndr_gives_none(write: Write, message: bytes) -> None:
    path = write(message)
    assert find_wrapped_journal_report(path) is None
    assert extracted(path) is None


def test_report_merely_attached_to_ordinary_mail_is_not_unwrapped(write: Write) -> None:
    report = build_exchange_report()
    forward = build_ndr(report, forwarded=True)
    # Turn the inner multipart/report into multipart/mixed: no longer an NDR.
    assert find_wrapped_journal_report(write(forward.replace(b"multipart/report", b"multipart/mixed"))) is None


def test_nesting_is_limited(write: Write) -> None:
    message = build_ndr(build_exchange_report())
    for _ in range(3):
        message = build_ndr(message)  # an NDR of an NDR of ...
    assert sliced(write(message)) is not None
    for _ in range(3):
        message = build_ndr(message)
    assert find_wrapped_journal_report(write(message)) is None


def test_truncated_ndr_gives_what_is_there(write: Write) -> None:
    report = build_exchange_report()
    ndr = build_ndr(report)
    cut = ndr[: ndr.rindex(report) + len(report)]  # lost the closing boundary
    assert sliced(write(cut)) == report


def test_garbage_never_raises(write: Write) -> None:
    rng = random.Random(3)
    ndr = build_ndr(build_exchange_report(), forwarded=True)
    for _ in range(40):
        data = bytearray(ndr)
        for _ in range(20):
            data[rng.randrange(len(data))] = rng.choice(b"-\r\n\x00\xff=:")
        path = write(bytes(data))
        span = find_wrapped_journal_report(path)
        assert span is None or 0 <= span[0] <= span[1] <= len(data)
        extracted(path)


def test_missing_file_raises_mime_error(tmp_path: Path) -> None:
    with pytest.raises(MimeError):
        find_wrapped_journal_report(tmp_path / "absent.eml")


def test_large_base64_report_is_extracted_in_bounded_memory(write: Write, tmp_path: Path) -> None:
    body = (b"0123456789" * 7 + b"\r\n") * (12 * 1024 * 1024 // 72)
    report = build_exchange_report(original=build_original(body=body))
    path = write(build_ndr(report, forwarded=True, cte="base64"))
    expected_size = len(report)
    del body
    out_path = tmp_path / "out.eml"

    tracemalloc.start()
    try:
        with open(out_path, "wb") as out:
            assert extract_wrapped_journal_report(path, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert out_path.stat().st_size == expected_size
    assert out_path.read_bytes() == report
    assert peak < 10 * 1024 * 1024, f"extracting used {peak} bytes at peak"


# --- the streaming MIME walker -------------------------------------------------------


def test_walker_offsets_and_tree(write: Write) -> None:
    report = build_exchange_report()
    ndr = build_ndr(report)
    parts = list(iter_parts(write(ndr)))
    layout = [(p.index, p.content_type) for p in parts]
    assert layout == [
        ((), "multipart/report"),
        ((0,), "text/plain"),
        ((1,), "message/delivery-status"),
        ((2,), "message/rfc822"),
        ((2, 0), "multipart/mixed"),  # the report, encapsulated
        ((2, 0, 0), "text/plain"),
        ((2, 0, 1), "message/rfc822"),
        ((2, 0, 1, 0), "text/plain"),  # the original journaled message
    ]
    root, wrapper, inner = parts[0], parts[3], parts[4]
    assert (root.start, root.end) == (0, len(ndr))
    assert ndr[inner.start : inner.end] == report
    assert (inner.start, inner.end) == (wrapper.body_start, wrapper.body_end)
    assert ndr[wrapper.start : wrapper.body_start].startswith(b"Content-Type: message/rfc822")
    assert ndr[wrapper.end : wrapper.end + 4] == b"\r\n--"
    assert all(not p.defects for p in parts)


def test_read_headers_tolerates_nul_8bit_and_bare_lf(write: Write) -> None:
    data = b"From: a\x00b@x\nSubject: Gr\xc3\xbc\xff\nX-Empty:\n\nbody\n"
    headers = read_headers(write(data))
    assert "X-Empty" in headers
    assert headers.get_payload() in ("", None)
    headers_from_stream = read_headers(io.BytesIO(data))
    assert headers_from_stream.keys() == ["From", "Subject", "X-Empty"]


def test_read_headers_is_bounded(write: Write) -> None:
    data = b"Subject: x\r\n" + b"X-Long: " + b"y" * 3_000_000 + b"\r\nTo: a@x\r\n\r\nbody"
    headers = read_headers(write(data), limit=1024)
    assert headers["Subject"] == "x"
    assert "X-Long" not in headers


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_body_decoding_across_chunks(write: Write, newline: bytes) -> None:
    payload = bytes(range(256)) * 2000 + "é = ü\t\n".encode() * 30_000
    qp = binascii.b2a_qp(payload).replace(b"\n", newline)
    b64 = base64.encodebytes(payload).replace(b"\n", newline)
    cases = (
        ("quoted-printable", qp, binascii.a2b_qp(qp)),  # its line breaks decode as written
        ("base64", b64, payload),
        ("8bit", payload, payload),
    )
    for encoding, body, expected in cases:
        data = b"Content-Transfer-Encoding: " + encoding.encode() + newline + newline + body
        part = next(iter_parts(write(data)))
        decoded = b"".join(iter_body(part, chunk_size=1000))
        assert decoded == expected, encoding
        assert read_body(part, 1234) == expected[:1234]


def test_damaged_base64_is_decoded_as_far_as_possible(write: Write) -> None:
    data = b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8g!!d2\x00 9y\r\nbGQ"
    part = next(iter_parts(write(data)))
    assert read_body(part, 100) == b"hello world"


def test_multipart_without_boundary_and_without_closing_boundary(write: Write) -> None:
    no_param = b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n"
    parts = list(iter_parts(write(no_param)))
    assert len(parts) == 1
    assert "no boundary parameter" in parts[0].defects[0]

    unclosed = b"Content-Type: multipart/mixed; boundary=x\n\n--x\n\nfirst\n--x\nContent-Type: text/html\n\nsecond"
    path = write(unclosed)
    parts = list(iter_parts(path))
    assert [p.content_type for p in parts] == ["multipart/mixed", "text/plain", "text/html"]
    assert [read_body(p, 100) for p in parts[1:]] == [b"first", b"second"]
    assert "no closing boundary" in parts[0].defects[0]


def test_boundary_must_be_a_whole_line(write: Write) -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=ab\r\n\r\n"
        b"--ab\r\n\r\ntext with --ab inside and\r\n--abc not a delimiter\r\n--ab  \r\n\r\nsecond\r\n--ab--\r\n"
    )
    parts = list(iter_parts(write(data)))
    bodies = [read_body(p, 1000) for p in parts[1:]]
    assert bodies == [b"text with --ab inside and\r\n--abc not a delimiter", b"second"]


def test_header_block_without_blank_line(write: Write) -> None:
    parts = list(iter_parts(write(b"Subject: x\r\nthis is body text\r\nmore\r\n")))
    assert parts[0].headers["Subject"] == "x"
    assert read_body(parts[0], 100) == b"this is body text\r\nmore\r\n"


def test_walker_on_garbage_yields_without_raising(write: Write) -> None:
    rng = random.Random(11)
    for size in (0, 1, 2, 100, 70_000, 200_000):
        data = rng.randbytes(size)
        parts = list(iter_parts(write(data)))
        assert parts[0].start == 0 and parts[0].end == size


def test_quoted_printable_line_longer_than_the_decode_window(write: Write) -> None:
    for shift in range(3):  # move the cut so that it falls inside and beside "=XX" escapes
        line = b"x" * shift + b"=C3=BCa=3D" * 130_000  # 1.3 MB without a line break
        part = next(iter_parts(write(b"Content-Transfer-Encoding: quoted-printable\n\n" + line)))
        assert b"".join(iter_body(part)) == binascii.a2b_qp(line)
