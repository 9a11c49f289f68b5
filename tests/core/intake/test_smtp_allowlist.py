"""smtp_exchange allow-lists (client address, CIDR, IPv6, PROXY protocol) and
the validation of both SMTP connection types, through the CLI and real clients."""

from __future__ import annotations

import socket
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import cli, wait_until
from tests.support.smtp import (
    ProxiedSMTP, SmtpSetup, arrival, make_setup, proxy_v1, proxy_v2, queue_id_of, send, wait_for_arrival,
)

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
# The listener trusts a PROXY header only from [smtp] proxy_protocol_from; the
# tests here speak it by hand (v1 and v2, forged and missing headers), and
# tests/test_smtp_haproxy.py through a real HAProxy.

BALANCER = "127.0.0.1"  # listed in proxy_protocol_from
STRANGER = "127.0.0.3"  # not listed


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(
        tmp_path_factory.mktemp("proxied"),
        smtp=f'proxy_protocol_from = ["{BALANCER}"]\nmax_connections_per_client = 2\n',
    )
    setup.add("behind", "smtp_exchange", sender_servers="192.0.2.0/24")
    setup.add("stranger", "smtp_exchange", sender_servers=STRANGER)
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
    # The real client is the message's peer; the balancer is recorded beside it.
    assert facts["peer_ip"] == "192.0.2.7" and facts["balancer_ip"] == BALANCER, facts
    assert proxied.server is not None
    proxied.server.wait_for_log("message queued", queue_id=queue_id, peer_ip="192.0.2.7")


def test_a_forged_header_from_an_unlisted_address_is_not_trusted(proxied: SmtpSetup) -> None:
    """A client that is not a listed balancer cannot claim another address:
    its PROXY header is an unknown command (500) and its own address counts."""
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=60, source_address=(STRANGER, 0)) as sock:
        replies = sock.makefile("rb")

        def say(line: bytes) -> bytes:
            sock.sendall(line)
            reply = replies.readline()
            while reply[3:4] == b"-":  # a multi-line reply: up to its last line
                reply = replies.readline()
            return reply

        assert replies.readline().startswith(b"220 ")
        assert say(proxy_v1("192.0.2.7")).startswith(b"500 ")
        assert say(b"EHLO forger.test\r\n").startswith(b"250 ")
        assert say(f"MAIL FROM:<{SENDER}>\r\n".encode()).startswith(b"250 ")
        refused = say(f"RCPT TO:<{proxied.address('behind')}>\r\n".encode())
        assert refused.startswith(b"550 5.7.1") and STRANGER.encode() in refused, refused  # 192.0.2.7 would pass
        assert say(f"RCPT TO:<{proxied.address('stranger')}>\r\n".encode()).startswith(b"250 ")

    # v2's binary header: its signature is built to end a non-PROXY session (it holds QUIT).
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=60, source_address=(STRANGER, 0)) as sock:
        replies = sock.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        sock.sendall(proxy_v2("192.0.2.7"))
        answers = replies.readlines()  # until the server closes
    assert answers and answers[0].startswith(b"500 ") and answers[-1].startswith(b"221 "), answers


def test_a_listed_balancer_without_a_header_is_dropped_with_the_cause_logged(proxied: SmtpSetup) -> None:
    assert proxied.server is not None
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=60) as sock:
        sock.sendall(b"EHLO direct.test\r\n")
        assert sock.recv(100) == b""  # no greeting: closed
    entry = proxied.server.wait_for_log("SMTP connection from a load balancer dropped", peer_ip=BALANCER)
    assert "PROXY header is invalid" in entry["cause"] and "unrecognized signature" in entry["cause"], entry

    # A client that waits for the greeting (as every SMTP client does) is dropped after the header timeout.
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib.SMTP("127.0.0.1", proxied.port, timeout=60)
    entry = proxied.server.wait_for_log("SMTP connection from a load balancer dropped", peer_ip=BALANCER,
                                        cause="it sent no complete PROXY header within 10 seconds")


def test_per_client_limit_counts_the_client_behind_the_balancer(proxied: SmtpSetup) -> None:
    """max_connections_per_client = 2 here: two sessions of one proxied client
    fill its share; a third is refused, and another client still gets in."""
    first = ProxiedSMTP(proxy_v2("192.0.2.9"), "127.0.0.1", proxied.port)
    second = ProxiedSMTP(proxy_v1("192.0.2.9"), "127.0.0.1", proxied.port)
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            ProxiedSMTP(proxy_v2("192.0.2.9"), "127.0.0.1", proxied.port)
        assert refused.value.smtp_code == 421 and b"192.0.2.9" in refused.value.smtp_error
        with ProxiedSMTP(proxy_v2("192.0.2.10"), "127.0.0.1", proxied.port) as other:
            assert other.noop()[0] == 250
    finally:
        first.quit()
        second.quit()
    wait_until(lambda: _third_session_admitted(proxied), timeout=30, message="192.0.2.9's sessions were not released")


def _third_session_admitted(setup: SmtpSetup) -> bool:
    try:
        with ProxiedSMTP(proxy_v2("192.0.2.9"), "127.0.0.1", setup.port) as client:
            return client.noop()[0] == 250
    except smtplib.SMTPConnectError:
        return False


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
