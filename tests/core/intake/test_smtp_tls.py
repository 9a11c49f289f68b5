"""STARTTLS with the operator's certificate, optional and required."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.support.helpers import ServerProcess
from tests.support.smtp import ProxiedSMTP, SmtpSetup, arrival, make_setup, proxy_v2, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"


def _tls_setup(root, certs, require: bool) -> SmtpSetup:
    smtp = f'tls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"\nhostname = "localhost"\n'
    if require:
        smtp += "require_tls = true\n"
    setup = make_setup(root, smtp=smtp)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    return setup.start()


@pytest.fixture(scope="module")
def required(tmp_path_factory: pytest.TempPathFactory, certs) -> Iterator[SmtpSetup]:
    setup = _tls_setup(tmp_path_factory.mktemp("tls-required"), certs, require=True)
    yield setup
    setup.stop()


def test_starttls_offered_and_recorded(tmp_path, certs) -> None:
    setup = _tls_setup(tmp_path, certs, require=False)
    try:
        with setup.client() as client:
            assert client.has_extn("starttls")
            code, reply, _ = send(client, SENDER, [setup.address("o365")], b"Subject: clear\r\n\r\nx\r\n")
            assert code == 250
            plain_id = queue_id_of(reply)
            client.starttls(context=certs.client_context())
            client.ehlo("client.test")
            assert not client.has_extn("starttls")
            code, reply, _ = send(client, SENDER, [setup.address("o365")], b"Subject: tls\r\n\r\nx\r\n")
            assert code == 250
            tls_id = queue_id_of(reply)
        [(_, plain)] = wait_for_arrival(setup.archive, plain_id)
        [(_, secured)] = wait_for_arrival(setup.archive, tls_id)
        assert arrival(plain, plain_id)["smtp"]["tls"] is False
        assert arrival(secured, tls_id)["smtp"]["tls"] is True
    finally:
        setup.stop()


def test_starttls_behind_a_load_balancer_keeps_the_proxied_client(tmp_path, certs) -> None:
    """STARTTLS starts a new aiosmtpd session; the client named by the
    balancer's PROXY header must survive it (allow-list and archived facts)."""
    setup = make_setup(tmp_path, smtp=(
        f'tls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"\nhostname = "localhost"\n'
        'proxy_protocol_from = ["127.0.0.1"]\n'
    ))
    setup.add("exchange", "smtp_exchange", sender_servers="192.0.2.7")  # not the balancer, 127.0.0.1
    setup.start()
    try:
        with ProxiedSMTP(proxy_v2("192.0.2.7"), "127.0.0.1", setup.port) as client:
            client.ehlo("client.test")
            client.starttls(context=certs.client_context())
            client.ehlo("client.test")
            code, reply, _ = send(client, SENDER, [setup.address("exchange")], b"Subject: tls behind lb\r\n\r\nx\r\n")
        assert code == 250, (code, reply)
        queue_id = queue_id_of(reply)
        [(_, meta)] = wait_for_arrival(setup.archive, queue_id)
        facts = arrival(meta, queue_id)["smtp"]
        assert (facts["peer_ip"], facts["balancer_ip"], facts["tls"]) == ("192.0.2.7", "127.0.0.1", True), facts
    finally:
        setup.stop()


def test_require_tls_refuses_mail_before_starttls(required: SmtpSetup, certs) -> None:
    with required.client() as client:
        code, text = client.mail(SENDER)
        assert code == 530, (code, text)
        client.starttls(context=certs.client_context())
        client.ehlo("client.test")
        code, reply, _ = send(client, SENDER, [required.address("o365")], b"Subject: required\r\n\r\nx\r\n")
        assert code == 250, (code, reply)


def test_unloadable_certificate_stops_the_server_with_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "missing.pem"
    setup = make_setup(tmp_path, smtp=f'tls_cert = "{missing}"\ntls_key = "{missing}"\n')
    server = ServerProcess(setup.config)
    with pytest.raises(AssertionError) as failure:
        server.start(timeout=60)
    assert "tls_cert" in str(failure.value) and "cannot be loaded" in str(failure.value)
    server.kill()


def test_tls_handshake_failure_does_not_take_the_listener_down(required: SmtpSetup, untrusted_certs) -> None:
    with required.client() as client:
        with pytest.raises((smtplib.SMTPException, OSError)):
            client.starttls(context=untrusted_certs.client_context())
    with required.client() as client:
        assert client.has_extn("starttls")
