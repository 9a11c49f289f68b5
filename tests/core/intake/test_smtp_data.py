"""The DATA scanner, dot-unstuffing, content checks, listen addresses
and reply formatting, without a network."""

from __future__ import annotations

import random

import pytest

from mailpipe.errors import ConfigError
from mailpipe.message.addresses import ListenAddress, parse_listen
from mailpipe.intake.smtp.data import DataChecks, DataScanner, DotUnstuffer
from mailpipe.intake.smtp.routing import reply_line
from mailpipe.types import Decision, Verdict

AFTER = b"QUIT\r\n"  # a pipelined command: not part of the message


def stuff(message: bytes) -> bytes:
    """What a client sends for ``message`` (which ends with CRLF, or is empty)."""
    wire = message.replace(b"\r\n.", b"\r\n..")
    if wire.startswith(b"."):
        wire = b"." + wire
    return wire + b".\r\n"


def receive(wire: bytes, pieces: list[int]) -> tuple[bytes, bytes, DataChecks]:
    """Feed ``wire`` to the scanner in the given piece sizes (then the rest at
    once), as the connection does; return the message, what follows the end
    mark, and the checks."""
    unstuffer, checks, out = DotUnstuffer(), DataChecks(), []

    def deliver(raw: bytes) -> None:
        data = unstuffer.feed(raw)
        checks.observe(data)
        out.append(data)

    scanner = DataScanner(deliver)
    position, left = 0, None
    for size in [*pieces, len(wire)]:
        piece = wire[position : position + size]
        position += len(piece)
        used = scanner.feed(piece)
        if used is not None:
            left = piece[used:] + wire[position:]
            break
    assert left is not None, "the end mark was not found"
    tail = unstuffer.flush()
    checks.observe(tail)
    out.append(tail)
    return b"".join(out), left, checks


ATOMS = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b"\x00", b"\r\n.\r", b"\xff"]


def test_random_messages_survive_any_split() -> None:
    generator = random.Random(20240115)
    for _ in range(3000):
        message = b"".join(generator.choice(ATOMS) for _ in range(generator.randint(0, 30)))
        if message and not message.endswith(b"\r\n"):
            message += b"\r\n"
        pieces = [generator.randint(0, 7) for _ in range(generator.randint(0, 12))]
        got, left, checks = receive(stuff(message) + AFTER, pieces)
        assert got == message, (message, pieces)
        assert left == AFTER
        assert checks.size == len(message)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b".\r\n",
        b"..\r\n",
        b"\r\n",
        b"line\r\n.\r\n",  # a data line that is a lone dot
        b"x\r\r\n",
        b"bare\n.\nLF dot LF is data\r\n",
    ],
)
def test_edge_cases(message: bytes) -> None:
    for pieces in ([1] * 20, [3] * 7, []):
        got, left, _ = receive(stuff(message) + AFTER, pieces)
        assert got == message and left == AFTER


def test_end_mark_is_only_crlf_dot_crlf() -> None:
    wire = b"a\n.\nb\n.\r\nc\r\n.\nd\r\n.\r\n"
    got, left, _ = receive(wire + AFTER, [])
    # ".\nd" after a CRLF is a line that begins with a dot: unstuffed
    assert got == b"a\n.\nb\n.\r\nc\r\n\nd\r\n" and left == AFTER


def test_big_message_in_pieces_holds_at_most_the_end_mark_back() -> None:
    line = b"." + b"z" * 77 + b"\r\n"
    message = line * 20000  # 1.6 MB, every line dot-stuffed
    wire = stuff(message)
    unstuffer, out, delivered = DotUnstuffer(), [], [0]

    def deliver(raw: bytes) -> None:
        delivered[0] += len(raw)
        out.append(unstuffer.feed(raw))

    scanner = DataScanner(deliver)
    piece_size = 64 * 1024
    for position in range(0, len(wire), piece_size):
        used = scanner.feed(wire[position : position + piece_size])
        if used is None:
            # everything received so far was handed on, but for a possible end mark's start
            assert position + piece_size + 2 - delivered[0] <= 4
    out.append(unstuffer.flush())
    assert b"".join(out) == message


def test_checks() -> None:
    def observe(*pieces: bytes) -> DataChecks:
        unstuffer, checks = DotUnstuffer(), DataChecks()
        for piece in (b"\r\n", *pieces):  # the scanner starts every message with a virtual CRLF
            checks.observe(unstuffer.feed(piece))
        checks.observe(unstuffer.flush())
        return checks

    odd = observe(b"abc\r\n", b"de\nf", b"\x00gh", b"ij\r\n")
    assert odd.bare_lf and odd.nul and odd.longest_line == len("f\x00ghij")
    clean = observe(b"a\r\nbb\r", b"\nccc\r\n")
    assert not clean.bare_lf and not clean.nul and clean.longest_line == 3
    long_line = observe(b"x" * 700, b"y" * 700 + b"\r\n", b"short\r\n")
    assert long_line.longest_line == 1400 and not long_line.bare_lf


# --- listen addresses -----------------------------------------------------------------


def test_listen_forms() -> None:
    assert parse_listen("127.0.0.1:2525") == [ListenAddress("127.0.0.1", 2525)]
    assert parse_listen(["127.0.0.1:25", "[::1]:25", "*:26", "localhost:27", "127.0.0.1:25"]) == [
        ListenAddress("127.0.0.1", 25),
        ListenAddress("::1", 25),
        ListenAddress(None, 26),
        ListenAddress("localhost", 27),
    ]
    assert str(ListenAddress("::1", 25)) == "[::1]:25"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("::1:25", "brackets"),
        ("127.0.0.1", "host and a port"),
        ("127.0.0.1:99999", "port must be"),
        ([], "list"),
        ([25], "not a string"),
        ("[::1:25", "brackets"),
    ],
)
def test_listen_errors_say_what_to_write(value: object, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        parse_listen(value)


# --- replies ---------------------------------------------------------------------------


def test_reply_lines_follow_the_verdict() -> None:
    assert reply_line(Decision.deny(550, "5.7.1 no")) == "550 5.7.1 no"
    assert reply_line(Decision.deny(451, "no\r\nINJECTED")) == "550 5.7.1 no INJECTED"
    assert reply_line(Decision.denysoft(550, "later")) == "451 4.7.1 later"
    assert reply_line(Decision(Verdict.DENYSOFT, 421, "4.3.2 shutting down")) == "421 4.3.2 shutting down"
