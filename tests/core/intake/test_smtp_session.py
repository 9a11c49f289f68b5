"""The SMTP session's own rules, on raw sockets against `mailpipe serve`:
pipelined commands, what ends a command line, unknown commands, STARTTLS
injection, the idle timeout's 421, and an ``async def`` accept hook."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from mailpipe.config import SmtpConfig
from mailpipe.connections.directory import ConnectionDirectory
from mailpipe import hookimpl
from mailpipe.intake.smtp.routing import Routed, Router
from mailpipe.plugin_host import PluginHost
from mailpipe.types import Connection, ConnectionType, Decision, Envelope
from tests.support.smtp import SmtpSetup, make_setup, queue_id_of, wait_for_arrival

SENDER = "journal@contoso.com"
MESSAGE = b"Subject: pipelined\r\n\r\nbody\r\n"
IDLE_TIMEOUT = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("session"), smtp=f"idle_timeout = {IDLE_TIMEOUT}\n")
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.start()
    yield setup
    setup.stop()


class Wire:
    """A raw SMTP client: sends bytes as given, reads whole reply lines."""

    def __init__(self, setup: SmtpSetup) -> None:
        self.sock = socket.create_connection((setup.host, setup.port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One reply (the last line of a multi-line one); b"" once closed."""
        while True:
            line = self.file.readline()
            if not line or line[3:4] != b"-":
                return line

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def wire(server: SmtpSetup) -> Iterator[Wire]:
    client = Wire(server)
    assert client.reply().startswith(b"220 ")
    yield client
    client.close()


def test_a_pipelined_transaction_sent_in_one_write_is_answered_in_order(server: SmtpSetup, wire: Wire) -> None:
    rcpt = server.address("o365").encode()
    wire.send(
        b"EHLO client.test\r\nMAIL FROM:<" + SENDER.encode() + b">\r\nRCPT TO:<nobody@elsewhere.test>\r\n"
        b"RCPT TO:<" + rcpt + b">\r\nDATA\r\n"
    )
    replies = [wire.reply() for _ in range(5)]
    assert [r[:3] for r in replies] == [b"250", b"250", b"550", b"250", b"354"], replies
    # The text, its end mark and the next two commands in one write too.
    wire.send(MESSAGE + b".\r\nRSET\r\nQUIT\r\n")
    queued, reset, bye = wire.reply(), wire.reply(), wire.reply()
    assert queued.startswith(b"250 2.0.0 OK: queued as "), queued
    assert reset.startswith(b"250") and bye.startswith(b"221"), (reset, bye)
    assert wire.reply() == b""  # closed after QUIT
    [(body, _)] = wait_for_arrival(server.archive, queue_id_of(queued.decode()))
    assert body == MESSAGE


def test_the_dot_of_the_end_mark_may_arrive_byte_by_byte(server: SmtpSetup, wire: Wire) -> None:
    wire.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<" + server.address("o365").encode() + b">\r\nDATA\r\n")
    assert [wire.reply()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
    text = MESSAGE + b".\r\n"
    for byte in range(len(text)):
        wire.send(text[byte : byte + 1])
        time.sleep(0.002)
    queued = wire.reply()
    assert queued.startswith(b"250 2.0.0"), queued
    [(body, _)] = wait_for_arrival(server.archive, queue_id_of(queued.decode()))
    assert body == MESSAGE


def test_a_command_line_too_long_is_refused_and_the_session_goes_on(wire: Wire) -> None:
    wire.send(b"NOOP " + b"x" * 600 + b"\r\n")  # over 512, under what is held
    assert wire.reply().startswith(b"500 5.5.2 Command line too long")
    wire.send(b"HELO " + b"y" * 100_000 + b"\r\n")  # far over: dropped as it arrives
    assert wire.reply().startswith(b"500 5.5.2 Command line too long")
    wire.send(b"NOOP\r\n")
    assert wire.reply().startswith(b"250")


def test_commands_end_at_lf_and_the_verb_is_case_insensitive(wire: Wire) -> None:
    wire.send(b"ehlo bare-lf.test\nnoop\n\r\n")
    assert wire.reply().startswith(b"250")  # EHLO (last line of the list)
    assert wire.reply().startswith(b"250")  # NOOP
    assert wire.reply().startswith(b"500 5.5.2 Error: bad syntax")  # the empty line


def test_five_unknown_commands_end_the_session(wire: Wire) -> None:
    for _ in range(4):
        wire.send(b"FOO\r\n")
        assert wire.reply().startswith(b'500 5.5.2 Error: command "FOO" not recognized')
    wire.send(b"FOO\r\n")
    assert wire.reply().startswith(b"502 5.5.1 Too many unrecognized commands")
    assert wire.reply() == b""


def test_an_idle_session_is_told_421_and_closed(wire: Wire) -> None:
    wire.send(b"EHLO idle.test\r\n")
    assert wire.reply().startswith(b"250")
    wire.sock.settimeout(IDLE_TIMEOUT * 10)
    closing = wire.reply()  # nothing sent: the server ends it
    assert closing.startswith(b"421 4.4.2 "), closing
    assert wire.reply() == b""


def test_commands_pipelined_behind_starttls_are_discarded(tmp_path, certs) -> None:
    """RFC 3207 4.2: what the client sent in the clear behind STARTTLS is not
    read as commands of the encrypted session (a man in the middle could
    have put it there)."""
    smtp = f'tls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"\nhostname = "localhost"\n'
    setup = make_setup(tmp_path, smtp=smtp)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.start()
    try:
        client = Wire(setup)
        assert client.reply().startswith(b"220 ")
        client.send(b"EHLO c\r\n")
        assert client.reply().startswith(b"250")
        client.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        assert client.reply().startswith(b"220 2.0.0")
        tls = certs.client_context().wrap_socket(client.sock, server_hostname="localhost")
        secure = tls.makefile("rb")
        tls.sendall(b"EHLO c\r\n")
        ehlo = [secure.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(secure.readline())
        assert ehlo[-1].startswith(b"250 ") and not any(b"STARTTLS" in line for line in ehlo)
        # Had the injected MAIL been read, this would be a nested MAIL (503).
        tls.sendall(b"MAIL FROM:<" + SENDER.encode() + b">\r\n")
        assert secure.readline().startswith(b"250 2.1.0")
        tls.sendall(b"STARTTLS\r\n")
        assert secure.readline().startswith(b"503 ")
        secure.close()
        tls.close()
    finally:
        setup.stop()


# --- a type's accept: a plain function is answered at once, async def later -----------------


class _Types:
    def __init__(self, accept) -> None:
        self.accept = accept

    @hookimpl
    def mailpipe_connection_types(self) -> list[ConnectionType]:
        return [ConnectionType(name="vendor_journal", description="a vendor's", receives="smtp", accept=self.accept)]


def _router(accept) -> tuple[Router, Envelope]:
    host = PluginHost()
    host.register(_Types(accept), "vendor")
    host.collect_registrations()
    directory = ConnectionDirectory()
    connection = Connection(id="v", type="vendor_journal", description="", enabled=True, settings={},
                            address="j-v@journal.test")
    directory.by_address = {"j-v@journal.test": connection}
    envelope = Envelope(peer_ip="127.0.0.1", helo="c", mail_from="a@b.test", rcpt_to="J-V@journal.test")
    return Router(directory, host, SmtpConfig()), envelope


def test_a_plain_accept_is_answered_without_waiting() -> None:
    router, envelope = _router(lambda connection, envelope: Decision.accept())
    routed = router.route(envelope)
    assert isinstance(routed, Routed) and routed.reply.startswith("250") and routed.connection is not None


def test_an_async_accept_is_awaited() -> None:
    async def accept(connection: Connection, envelope: Envelope) -> Decision:
        await asyncio.sleep(0)
        return Decision.deny(550, "5.7.1 not this one")

    router, envelope = _router(accept)
    pending = router.route(envelope)
    assert not isinstance(pending, Routed)
    routed = asyncio.run(_settle(pending))
    assert routed.reply == "550 5.7.1 not this one" and routed.connection is None


async def _settle(pending):
    return await pending
