"""smtp_exchange allow-lists (client address, CIDR, IPv6, PROXY protocol) and
the validation of both SMTP connection types, through the CLI and real clients."""

from __future__ import annotations

import socket
import smtplib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import cli
from tests.support.smtp import SmtpSetup, arrival, make_setup, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"
MESSAGE = b"Subject: exchange journal\r\n\r\nbody\r\n"


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _ipv6_loopback()


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    listen = ["127.0.0.1:{port}"] + (["[::1]:{port}"] if HAS_IPV6 else [])
    setup = make_setup(tmp_path_factory.mktemp("exchange"), listen=listen)
    setup.add("single", "smtp_exchange", sender_servers="127.0.0.2")
    setup.add("range", "smtp_exchange", sender_servers="10.9.8.7, 127.0.0.0/30")
    setup.add("v6", "smtp_exchange", sender_servers="::1/128")
    setup.start()
    yield setup
    setup.stop()


def _try(setup: SmtpSetup, name: str, source: str | None = None, host: str | None = None) -> tuple[int, bytes]:
    with setup.client(source=source, host=host) as client:
        client.mail(SENDER)
        return client.rcpt(setup.address(name))


def test_single_address_allows_only_that_client(exchange: SmtpSetup) -> None:
    code, text = _try(exchange, "single", source="127.0.0.1")
    assert code == 550 and text.startswith(b"5.7.1"), (code, text)
    assert b"sending server 127.0.0.1 is not allowed for this connection" in text
    with exchange.client(source="127.0.0.2") as client:
        code, reply, _ = send(client, SENDER, [exchange.address("single")], MESSAGE)
    assert code == 250, (code, reply)
    queue_id = queue_id_of(reply)
    [(raw, meta)] = wait_for_arrival(exchange.archive, queue_id)
    assert raw == MESSAGE
    assert arrival(meta, queue_id)["smtp"]["peer_ip"] == "127.0.0.2"


def test_cidr_range(exchange: SmtpSetup) -> None:
    assert _try(exchange, "range", source="127.0.0.3")[0] == 250
    assert _try(exchange, "range", source="127.0.0.1")[0] == 250
    code, text = _try(exchange, "range", source="127.0.0.4")
    assert code == 550 and b"127.0.0.4" in text


@pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback")
def test_ipv6_loopback(exchange: SmtpSetup) -> None:
    assert _try(exchange, "v6", host="::1")[0] == 250
    assert _try(exchange, "v6", host="127.0.0.1")[0] == 550
    assert _try(exchange, "single", host="::1")[0] == 550
    with exchange.client(host="::1") as client:
        code, reply, _ = send(client, SENDER, [exchange.address("v6")], MESSAGE + b"v6\r\n")
    queue_id = queue_id_of(reply)
    [(_, meta)] = wait_for_arrival(exchange.archive, queue_id)
    assert arrival(meta, queue_id)["smtp"]["peer_ip"] == "::1"


# --- PROXY protocol ------------------------------------------------------------------


class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a load balancer: the PROXY header goes first."""

    def __init__(self, header: bytes, host: str, port: int) -> None:
        self.proxy_header = header
        super().__init__(host, port, timeout=60)

    def _get_socket(self, host, port, timeout):  # type: ignore[no-untyped-def]
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.proxy_header)
        return sock


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.1 40000 25\r\n".encode()


def proxy_v2(source: str) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 40001, 25)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("proxied"), smtp="proxy_protocol = true\n")
    setup.add("behind", "smtp_exchange", sender_servers="192.0.2.0/24")
    setup.start()
    yield setup
    setup.stop()


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_proxy_protocol_source_is_what_the_allow_list_checks(proxied: SmtpSetup, header) -> None:
    with ProxiedSMTP(header("198.51.100.7"), "127.0.0.1", proxied.port) as client:
        client.ehlo("lb.test")
        client.mail(SENDER)
        code, text = client.rcpt(proxied.address("behind"))
    assert code == 550 and b"198.51.100.7" in text, (code, text)

    with ProxiedSMTP(header("192.0.2.7"), "127.0.0.1", proxied.port) as client:
        client.ehlo("lb.test")
        code, reply, _ = send(client, SENDER, [proxied.address("behind")], MESSAGE + header.__name__.encode() + b"\r\n")
    assert code == 250, (code, reply)
    queue_id = queue_id_of(reply)
    [(_, meta)] = wait_for_arrival(proxied.archive, queue_id)
    facts = arrival(meta, queue_id)["smtp"]
    assert facts["proxied_ip"] == "192.0.2.7" and facts["peer_ip"] == "127.0.0.1"


def test_connection_without_proxy_header_is_closed(proxied: SmtpSetup) -> None:
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=30) as sock:
        sock.sendall(b"EHLO direct.test\r\n")
        assert sock.recv(100) == b""  # no greeting: closed


# --- validation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_setup(
        tmp_path_factory.mktemp("domains"), smtp='accepted_domains = ["contoso.com", "Fabrikam.com"]\n'
    ).config


def test_exchange_validation_names_every_bad_entry(domains_config: Path) -> None:
    result = cli(domains_config, "connections", "add", "smtp_exchange", "--description", "x",
                 "--set", "sender_servers=10.0.0.300,10.1.0.0/16,fe80::zz,2001:db8::/32")
    assert result.code != 0
    assert "'10.0.0.300' is not an IP address or CIDR range" in result.err
    assert "'fe80::zz' is not an IP address or CIDR range" in result.err
    assert "10.1.0.0/16" not in result.err
    good = cli(domains_config, "connections", "add", "smtp_exchange", "--description", "x",
               "--set", "sender_servers=10.0.0.1, 2001:db8::/32", check=True).json
    assert good["settings"]["sender_servers"] == ["10.0.0.1/32", "2001:db8::/32"]
    assert good["address"].endswith("@journal.test")


def test_o365_undeliverable_address_must_be_on_an_accepted_domain(domains_config: Path) -> None:
    wrong = cli(domains_config, "connections", "add", "smtp_o365", "--description", "x",
                "--set", "undeliverable_journal_address=journal@other.org")
    assert wrong.code != 0
    assert "contoso.com, fabrikam.com" in wrong.err
    invalid = cli(domains_config, "connections", "add", "smtp_o365", "--description", "x",
                  "--set", "undeliverable_journal_address=not-a-mailbox")
    assert invalid.code != 0 and "not an email address" in invalid.err
    ok = cli(domains_config, "connections", "add", "smtp_o365", "--description", "x",
             "--set", "undeliverable_journal_address=journal@Fabrikam.com", check=True).json
    assert ok["enabled"] is False and ok["address"].startswith("j-")


@pytest.mark.parametrize("wide", ["0.0.0.0/0", "::/0", "10.0.0.0/8"])
def test_a_world_wide_sender_range_is_accepted_with_a_warning(tmp_path: Path, wide: str) -> None:
    """Issue 11, item 7: `sender_servers=0.0.0.0/0` was accepted silently."""
    setup = make_setup(tmp_path)
    added = cli(setup.config, "connections", "add", "smtp_exchange", "--description", "lab",
                "--set", f"sender_servers={wide}")
    assert added.code == 0, added
    assert "warning" in added.err and wide in added.err
    assert "whole Internet" in added.err or "admits" in added.err
    tested = cli(setup.config, "connections", "test", added.json["id"])
    assert any(wide in warning for warning in tested.json["warnings"]), tested


def test_a_narrow_sender_range_gives_no_warning(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    added = cli(setup.config, "connections", "add", "smtp_exchange", "--description", "site",
                "--set", "sender_servers=192.0.2.10,198.51.100.0/24")
    assert added.code == 0 and "warning" not in added.err, added
