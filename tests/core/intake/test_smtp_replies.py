"""Every reply of the SMTP listener, with a real client (smtplib) against `mailpipe serve`.

One server for the default settings and one with the strict ones (refuse
disabled connections permanently, small size limit, bare LF and long lines
refused), shared by the tests of this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import cli, wait_until
from tests.support.smtp import (
    JOURNAL_DOMAIN,
    SmtpSetup,
    archived,
    arrival,
    make_setup,
    queue_id_of,
    send,
    pending_count,
    spooled_count,
    wait_for_arrival,
)

SENDER = "undeliverable@contoso.com"
PLAIN = b"From: alice@contoso.com\r\nTo: bob@contoso.com\r\nSubject: plain\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("lenient"))
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.add("second", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.add("off", "smtp_o365", enable=False, undeliverable_journal_address=SENDER)
    setup.start()
    yield setup
    setup.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(
        tmp_path_factory.mktemp("strict"),
        smtp='disabled_reply = "reject"\nmax_message_size = 100000\nbare_lf = "reject"\nmax_line_length = 998\n',
    )
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.add("off", "smtp_o365", enable=False, undeliverable_journal_address=SENDER)
    setup.start()
    yield setup
    setup.stop()


# --- recipients ---------------------------------------------------------------------


def test_unknown_journal_address_is_550_5_1_1(lenient: SmtpSetup) -> None:
    with lenient.client() as client:
        client.mail(SENDER)
        code, text = client.rcpt(f"j-nosuchaddress@{JOURNAL_DOMAIN}")
    assert code == 550 and text.startswith(b"5.1.1"), (code, text)


def test_a_refusal_never_echoes_control_characters(lenient: SmtpSetup) -> None:
    """Issue 11, item 7: the 550 echoed a NUL byte (and would echo an escape
    sequence) from the recipient into the sender's logs."""
    import socket

    with socket.create_connection(("127.0.0.1", lenient.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        reader.readline()  # 220
        sock.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<" + SENDER.encode() + b">\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"RCPT TO:<j-no\x00such\x1b[31m@" + JOURNAL_DOMAIN.encode() + b">\r\n")
        reply = reader.readline()
    assert reply.startswith(b"550 5.1.1"), reply
    assert not any(byte < 0x20 or byte == 0x7F for byte in reply.rstrip(b"\r\n")), reply
    assert b"j-no\\x00such\\x1b[31m@" in reply  # shown, escaped, so the operator sees what was sent


def test_no_open_relay(lenient: SmtpSetup) -> None:
    before = spooled_count(lenient)
    with lenient.client() as client:
        data_code, _, replies = send(client, SENDER, ["victim@example.org", "postmaster@example.org"], PLAIN)
        assert data_code == 0
        for code, text in replies.values():
            assert code == 550 and text.startswith(b"5.7.1") and b"relaying denied" in text
        # DATA without an accepted recipient is refused too
        client.mail(SENDER)
        client.rcpt("victim@example.org")
        code, _ = client.docmd("DATA")
        assert code == 554
    assert spooled_count(lenient) == before


def test_disabled_connection_is_tempfailed_by_default(lenient: SmtpSetup) -> None:
    with lenient.client() as client:
        client.mail(SENDER)
        code, text = client.rcpt(lenient.address("off"))
    assert code == 451 and text.startswith(b"4.7.1") and b"disabled" in text, (code, text)


def test_disabled_connection_rejected_when_configured(strict: SmtpSetup) -> None:
    with strict.client() as client:
        client.mail(SENDER)
        code, text = client.rcpt(strict.address("off"))
    assert code == 550 and text.startswith(b"5.7.1") and b"disabled" in text, (code, text)


def test_recipient_addresses_are_case_insensitive(lenient: SmtpSetup) -> None:
    with lenient.client() as client:
        client.mail(SENDER)
        code, _ = client.rcpt(lenient.address("o365").upper())
    assert code == 250


# --- accepted mail ------------------------------------------------------------------


def test_accepted_message_reply_carries_queue_id_and_metadata(lenient: SmtpSetup) -> None:
    message = b"Subject: metadata\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"
    with lenient.client() as client:
        code, text, _ = send(client, SENDER, [lenient.address("o365")], message)
    assert code == 250 and text.startswith("2.0.0"), (code, text)
    queue_id = queue_id_of(text)
    [(raw, meta)] = wait_for_arrival(lenient.archive, queue_id)
    assert raw == message  # dot-unstuffed, byte for byte
    assert meta["sha256"] == hashlib.sha256(message).hexdigest()
    entry = arrival(meta, queue_id)
    assert entry["spool_id"] == queue_id
    assert entry["connection_id"] == lenient.connections["o365"]["id"]
    assert entry["connection_type"] == "smtp_o365"
    assert entry["provenance"] == "smtp"
    assert entry["smtp"] == {
        "peer_ip": "127.0.0.1",
        "balancer_ip": None,
        "helo": "client.test",
        "mail_from": SENDER,
        "rcpt_to": [lenient.address("o365")],
        "queue_id": queue_id,
        "tls": False,
    }
    assert "journal" not in meta  # plain mail: its SMTP envelope is the metadata


def test_one_copy_per_connection_in_a_transaction(lenient: SmtpSetup) -> None:
    message = b"Subject: two connections\r\n\r\nfor both\r\n"
    first, second = lenient.address("o365"), lenient.address("second")
    with lenient.client() as client:
        code, text, replies = send(
            client, SENDER, [first, f"j-unknown@{JOURNAL_DOMAIN}", second, first.upper()], message
        )
    assert code == 250, (code, text)
    assert replies[f"j-unknown@{JOURNAL_DOMAIN}"][0] == 550
    queue_id = queue_id_of(text)
    copies = wait_until(lambda: len(found := _copies(lenient, queue_id)) == 2 and found)
    by_connection = {meta["connection_id"]: (raw, arrival(meta, queue_id)) for raw, meta in copies}
    assert set(by_connection) == {lenient.connections["o365"]["id"], lenient.connections["second"]["id"]}
    for connection_id, (raw, entry) in by_connection.items():
        assert raw == message
        assert entry["smtp"]["queue_id"] == queue_id
    assert by_connection[lenient.connections["second"]["id"]][1]["smtp"]["rcpt_to"] == [second]
    assert by_connection[lenient.connections["o365"]["id"]][1]["smtp"]["rcpt_to"] == [first, first.upper()]
    spool_ids = {entry["spool_id"] for _, entry in by_connection.values()}
    assert len(spool_ids) == 2 and queue_id in spool_ids


def _copies(setup: SmtpSetup, queue_id: str) -> list:
    return [
        (raw, meta)
        for raw, meta in archived(setup.archive)
        if any(a.get("smtp", {}).get("queue_id") == queue_id for a in meta["arrivals"])
    ]


def test_odd_bytes_archived_as_received_by_default(lenient: SmtpSetup) -> None:
    long_line = b"x" * 5000
    message = (
        b"Subject: odd bytes\r\n\r\nbare LF\nline\r\nNUL \x00 byte\r\nbare CR \r here\r\n"
        + long_line + b"\r\n\xff\xfe 8-bit\r\n\n.\n.\r\n"
    )
    with lenient.client() as client:
        code, text, _ = send(client, SENDER, [lenient.address("o365")], message, options=("BODY=8BITMIME",))
    assert code == 250, (code, text)
    queue_id = queue_id_of(text)
    [(raw, meta)] = wait_for_arrival(lenient.archive, queue_id)
    assert raw == message
    notes = " ".join(arrival(meta, queue_id).get("notes", []))
    assert "bare LF" in notes and "NUL" in notes and "5000 octets" in notes


def test_lf_dot_lf_does_not_end_the_message(lenient: SmtpSetup) -> None:
    """SMTP smuggling: only CRLF . CRLF ends DATA."""
    with lenient.client() as client:
        client.mail(SENDER)
        client.rcpt(lenient.address("o365"))
        client.docmd("DATA")
        client.send(b"Subject: smuggle\r\n\r\nbefore\n.\nMAIL FROM:<evil@x>\r\nafter\r\n.\r\n")
        code, text = client.getreply()
    assert code == 250
    queue_id = queue_id_of(text.decode())
    [(raw, _)] = wait_for_arrival(lenient.archive, queue_id)
    assert raw == b"Subject: smuggle\r\n\r\nbefore\n.\nMAIL FROM:<evil@x>\r\nafter\r\n"


def test_8bitmime_and_smtputf8(lenient: SmtpSetup) -> None:
    message = "Subject: Grüße\r\nFrom: jörg@exämple.de\r\n\r\nÜnïcödé body\r\n".encode()
    with lenient.client() as client:
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        code, text, _ = send(
            client, "jörg@exämple.de", [lenient.address("o365")], message, options=("SMTPUTF8", "BODY=8BITMIME")
        )
    assert code == 250, (code, text)
    queue_id = queue_id_of(text)
    [(raw, meta)] = wait_for_arrival(lenient.archive, queue_id)
    assert raw == message
    assert arrival(meta, queue_id)["smtp"]["mail_from"] == "jörg@exämple.de"


def test_ehlo_advertises_size_and_no_auth(lenient: SmtpSetup, strict: SmtpSetup) -> None:
    with lenient.client() as client:
        assert client.esmtp_features["size"] == str(150 * 1024 * 1024)
        assert "auth" not in client.esmtp_features
        assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
        assert "starttls" not in client.esmtp_features  # no certificate configured
    with strict.client() as client:
        assert client.esmtp_features["size"] == "100000"


# --- refusals of the message itself -------------------------------------------------


def test_declared_size_over_limit_is_552_5_3_4(strict: SmtpSetup) -> None:
    with strict.client() as client:
        code, text = client.mail(SENDER, ["SIZE=100001"])
    assert code == 552 and text.startswith(b"5.3.4"), (code, text)


def test_streamed_message_over_limit_is_552_5_3_4(strict: SmtpSetup) -> None:
    before = spooled_count(strict)
    message = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 200  # ~200 KB, no SIZE declared
    with strict.client() as client:
        code, text, _ = send(client, SENDER, [strict.address("o365")], message)
        assert code == 552 and text.startswith("5.3.4"), (code, text)
        # the session goes on
        code, text, _ = send(client, SENDER, [strict.address("o365")], PLAIN)
        assert code == 250
    wait_for_arrival(strict.archive, queue_id_of(text))
    wait_until(lambda: pending_count(strict) == 0, message="the spool did not drain")
    assert spooled_count(strict) == before + 1
    # the refused message's partial file is gone (what remains are empty files made ahead for the next messages)
    assert [p for p in (strict.root / "data" / "spool" / "tmp").iterdir() if p.stat().st_size] == []


def test_bare_lf_refused_when_configured(strict: SmtpSetup) -> None:
    with strict.client() as client:
        code, text, _ = send(client, SENDER, [strict.address("o365")], b"Subject: lf\n\nbody\n")
    assert code == 550 and text.startswith("5.6.0") and "bare LF" in text, (code, text)


def test_long_line_refused_when_configured(strict: SmtpSetup) -> None:
    with strict.client() as client:
        code, text, _ = send(client, SENDER, [strict.address("o365")], b"Subject: long\r\n\r\n" + b"z" * 999 + b"\r\n")
        assert code == 500 and text.startswith("5.5.2"), (code, text)
        code, text, _ = send(client, SENDER, [strict.address("o365")], b"Subject: ok\r\n\r\n" + b"z" * 998 + b"\r\n")
        assert code == 250, (code, text)


# --- hot reload ------------------------------------------------------------------------


def _rcpt_code(setup: SmtpSetup, address: str) -> int:
    with setup.client() as client:
        client.mail(SENDER)
        return client.rcpt(address)[0]


def test_disable_enable_delete_in_a_running_server(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    added = setup.add("live", "smtp_o365", undeliverable_journal_address=SENDER)
    address = added["address"]
    setup.start()
    try:
        assert _rcpt_code(setup, address) == 250
        cli(setup.config, "connections", "disable", added["id"], check=True)
        wait_until(lambda: _rcpt_code(setup, address) == 451, timeout=10, message="disable did not take effect")
        cli(setup.config, "connections", "enable", added["id"], check=True)
        wait_until(lambda: _rcpt_code(setup, address) == 250, timeout=10, message="enable did not take effect")
        with setup.client() as client:
            code, text, _ = send(client, SENDER, [address], PLAIN)
        assert code == 250
        cli(setup.config, "connections", "delete", added["id"], check=True)
        wait_until(lambda: _rcpt_code(setup, address) == 550, timeout=10, message="delete did not take effect")
        with setup.client() as client:
            client.mail(SENDER)
            assert client.rcpt(address)[1].startswith(b"5.1.1")
        wait_for_arrival(setup.archive, queue_id_of(text))
    finally:
        setup.stop()


def test_smtp_protocol_errors_do_not_break_the_session(lenient: SmtpSetup) -> None:
    with lenient.client() as client:
        assert client.docmd("RCPT TO:<x@y>")[0] == 503  # before MAIL
        assert client.docmd("MAIL FROM:<a@b> FOO=1")[0] == 555
        assert client.docmd("MAIL FROM:<> SIZE=10")[0] == 250  # the null sender
        assert client.docmd("MAIL FROM:<a@b>")[0] == 503  # nested
        assert client.docmd("AUTH PLAIN AGFAYg==")[0] == 502
        client.rset()
        code, text, _ = send(client, "<>", [lenient.address("o365")], PLAIN)
        assert code == 250, (code, text)
