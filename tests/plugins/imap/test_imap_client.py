"""The pure parts of the IMAP client: FETCH parsing and the linear completeness check.

(The protocol itself is tested against Dovecot in the other test_imap_* modules.)
"""

from __future__ import annotations

import asyncio
import random

import aioimaplib

from mailpipe.plugins.imap.aioimaplib_compat import ImapProtocol, LinearFetchCommand
from mailpipe.plugins.imap.client import parse_fetch


def test_parse_fetch_whatever_the_item_order() -> None:
    lines = [
        b"1 FETCH (UID 10 RFC822.SIZE 5 BODY[] {5}",
        bytearray(b"hello"),
        b")",
        b"2 FETCH (BODY[] {3}",  # body first, UID after it
        bytearray(b"abc"),
        b" UID 11)",
        b"3 FETCH (FLAGS (\\Seen))",  # unsolicited: another client set a flag
        b'4 FETCH (UID 13 BODY[] "")',  # empty message as a quoted string
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    items = {item.uid: item for item in parse_fetch(lines)}
    assert set(items) == {10, 11, 13}
    assert items[10].body == b"hello" and items[10].size == 5
    assert items[11].body == b"abc" and items[11].size is None
    assert items[13].body == b""


def test_parse_fetch_keeps_the_literal_object() -> None:
    """No copy of a message body is made while parsing."""
    body = bytearray(b"x" * 1000)
    (item,) = parse_fetch([b"7 FETCH (UID 7 BODY[]<0> {1000}", body, b")", b"done"])
    assert item.body is body


def test_linear_completeness_check_agrees_with_aioimaplib() -> None:
    async def compare() -> None:
        rng = random.Random(7)
        for _ in range(200):
            stock = aioimaplib.FetchCommand("A1", "1:*", "(BODY[])", prefix="UID")
            linear = LinearFetchCommand("A1", "1:*", "(BODY[])", prefix="UID")
            for _ in range(rng.randint(1, 30)):
                line = rng.choice([
                    b"%d FETCH (UID %d BODY[] {3}" % (rng.randint(1, 9), rng.randint(1, 9)),
                    b")", b" FLAGS (\\Seen))", b"(", b"x", b"%d FETCH (FLAGS (\\Seen))" % rng.randint(1, 9),
                ])
                literal = rng.random() < 0.2
                for command in (stock, linear):
                    command.append_to_resp(bytearray(b"(((") if literal else line)
                assert stock.wait_data() == linear.wait_data()

    asyncio.run(compare())


def test_fetch_times_out_only_after_a_quiet_spell() -> None:
    """The inactivity timer: data arriving keeps the command alive past its
    timeout; silence for the timeout ends it with aioimaplib's CommandTimeout."""

    async def scenario() -> tuple[bool, bool]:
        command = LinearFetchCommand("A1", "1:*", "(BODY[])", prefix="UID", timeout=1.0)
        loop = asyncio.get_running_loop()
        busy_until = loop.time() + 2.5
        while loop.time() < busy_until:  # 2.5 timeouts' worth of steady data
            command.append_to_resp(b"1 FETCH (UID 1 FLAGS ())")
            await asyncio.sleep(0.05)
        alive_while_busy = command.response.result == "Pending"
        try:
            await asyncio.wait_for(command.wait(), 10)
        except aioimaplib.CommandTimeout:
            return alive_while_busy, True
        return alive_while_busy, False

    alive_while_busy, timed_out_when_quiet = asyncio.run(scenario())
    assert alive_while_busy
    assert timed_out_when_quiet


def test_linear_reader_agrees_with_aioimaplib_on_any_split() -> None:
    """The response reader that replaced aioimaplib's recursive one gives the
    same FETCH response lines, however the server's bytes are cut into reads."""
    bodies = [b"Subject: %d\r\n\r\n" % n + b"x" * (n * 37 % 300) + b"\r\n(unbalanced { 12}\r\n" for n in range(25)]
    stream = b"".join(
        b"* %d FETCH (UID %d RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n" % (n + 1, 100 + n, len(b), len(b), b)
        + (b"* %d EXPUNGE\r\n" % (n + 1) if n % 7 == 3 else b"")
        + (b'* %d FETCH (UID %d BODY[] "")\r\n' % (n + 1, 200 + n) if n % 11 == 5 else b"")
        for n, b in enumerate(bodies)
    )

    class Sink:
        def write(self, data: bytes) -> None:
            pass

    async def lines_read_by(protocol_class: type, cuts: list[int]) -> list:
        loop = asyncio.get_running_loop()
        protocol = protocol_class(loop, None)
        protocol.connection_made(Sink())
        protocol.state = aioimaplib.SELECTED
        tag = protocol.new_tag()
        command = aioimaplib.FetchCommand(tag, "1:*", "(UID BODY[])", prefix="UID", loop=loop)
        task = asyncio.create_task(protocol.execute(command))
        await asyncio.sleep(0)
        data = stream + tag.encode() + b" OK Fetch completed.\r\n"
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            protocol.data_received(data[start:end])
        response = await asyncio.wait_for(task, 5)
        return [bytes(line) for line in response.lines]

    async def compare() -> None:
        rng = random.Random(11)
        length = len(stream) + 40
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, length - 30), rng.randint(1, 60)))
            expected = await lines_read_by(aioimaplib.IMAP4ClientProtocol, cuts)
            assert await lines_read_by(ImapProtocol, cuts) == expected
        assert len(expected) > 50

    asyncio.run(compare())
