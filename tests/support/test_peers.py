"""The real-peer fixtures work: if these fail, every peer test after them is meaningless."""

from __future__ import annotations

import imaplib
import os
import pwd
import socket
import ssl

import botocore.exceptions
import pytest

from tests.support.peers.certs import CertBundle
from tests.support.peers.dovecot import Dovecot
from tests.support.peers.postgres import Postgres
from tests.support.peers.require import REQUIRE_PEERS_ENV, peer_missing
from tests.support.peers.s3 import MotoS3

pytestmark = pytest.mark.peer

# 8-bit, CRLF, a long line and a dot-line: what journal reports really contain.
MESSAGE = (
    b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.com>\r\n"
    b"To: archive@example.com\r\n"
    b"Subject: 8bit body\r\n"
    b"Message-ID: <peer-test@example.com>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xe2\x82\xac and a raw latin-1 byte: \xe9\r\n"
    b".\r\n"
    + b"x" * 900
    + b"\r\n"
)


def _read_until(stream: ssl.SSLSocket, marker: bytes) -> bytes:
    """Read until *marker* appears (the socket timeout bounds the wait)."""
    data = b""
    while marker not in data:
        chunk = stream.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def test_peer_missing_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_PEERS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        peer_missing("no peer here")
    monkeypatch.setenv(REQUIRE_PEERS_ENV, "1")
    with pytest.raises(pytest.fail.Exception):
        peer_missing("no peer here")


def test_imaps_login_verifies_against_the_ca(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, password = fresh_imap_user
    for host in ("127.0.0.1", "localhost"):  # IP SAN and DNS SAN both verify
        context = ssl.create_default_context(cafile=str(dovecot.ca_file))
        client = imaplib.IMAP4_SSL(host, dovecot.imaps_port, ssl_context=context, timeout=30)
        try:
            assert client.login(user, password)[0] == "OK"
            client.capability()
            assert "IDLE" in client.capabilities
            assert client.select("INBOX")[0] == "OK"
        finally:
            client.logout()


def test_imaps_rejects_untrusted_certificates(dovecot: Dovecot, untrusted_certs: CertBundle) -> None:
    for context in (ssl.create_default_context(), untrusted_certs.client_context()):
        with pytest.raises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=30)


def test_wrong_password_is_refused(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, _ = fresh_imap_user
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        with dovecot.session(user, "not-the-password"):
            pass


def test_append_and_fetch_byte_for_byte(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, _ = fresh_imap_user
    first = dovecot.append(user, MESSAGE)
    second = dovecot.append(user, MESSAGE.replace(b"peer-test", b"peer-test-2"), flags=["\\Seen", "$Archived"])
    assert dovecot.uids(user) == [first, second]
    messages = dovecot.fetch_all(user)
    assert messages[first] == MESSAGE
    assert messages[second] == MESSAGE.replace(b"peer-test", b"peer-test-2")
    assert dovecot.flags(user) == {first: set(), second: {"\\Seen", "$Archived"}}
    # fetch_all used BODY.PEEK[]: reading did not mark anything \Seen.
    assert dovecot.flags(user)[first] == set()


def test_other_mailboxes(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, _ = fresh_imap_user
    dovecot.create_mailbox(user, "Journal Reports")
    assert "Journal Reports" in dovecot.mailboxes(user)
    assert dovecot.fetch_all(user, "Journal Reports") == {}
    uid = dovecot.append(user, MESSAGE, mailbox="Journal Reports")
    assert dovecot.fetch_all(user, "Journal Reports") == {uid: MESSAGE}
    assert dovecot.uids(user, "INBOX") == []


def test_plain_port_does_not_speak_tls(dovecot: Dovecot) -> None:
    with socket.create_connection((dovecot.host, dovecot.imap_plain_port), timeout=30) as raw:
        with pytest.raises(ssl.SSLError):
            dovecot.ssl_context().wrap_socket(raw, server_hostname=dovecot.host)
    with socket.create_connection((dovecot.host, dovecot.imap_plain_port), timeout=30) as raw:
        assert raw.recv(1024).startswith(b"* OK")  # it is IMAP, just not TLS


def test_idle_reports_new_mail(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, password = fresh_imap_user
    raw = socket.create_connection((dovecot.host, dovecot.imaps_port), timeout=30)
    with dovecot.ssl_context().wrap_socket(raw, server_hostname=dovecot.host) as tls:
        _read_until(tls, b"\r\n")
        tls.sendall(f'a1 LOGIN "{user}" "{password}"\r\n'.encode())
        _read_until(tls, b"a1 OK")
        tls.sendall(b"a2 SELECT INBOX\r\n")
        _read_until(tls, b"a2 OK")
        tls.sendall(b"a3 IDLE\r\n")
        _read_until(tls, b"+ ")
        dovecot.append(user, MESSAGE)
        assert b"* 1 EXISTS" in _read_until(tls, b"EXISTS")
        tls.sendall(b"DONE\r\n")
        _read_until(tls, b"a3 OK")


def test_dovecot_outage_keeps_mail(private_dovecot: Dovecot) -> None:
    server = private_dovecot
    password = server.add_user("carol")
    uid = server.append("carol", MESSAGE)
    ports = (server.imaps_port, server.imap_plain_port)

    session = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=server.ssl_context(), timeout=30)
    session.login("carol", password)
    session.select("INBOX")
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.imaps_port), timeout=30).close()
    with pytest.raises((imaplib.IMAP4.abort, OSError)):  # BYE was sent, then the socket closed
        session.noop()
    assert server.processes() == []

    server.start()
    assert (server.imaps_port, server.imap_plain_port) == ports
    assert server.fetch_all("carol") == {uid: MESSAGE}

    server.kill()  # a crash, not a shutdown
    assert server.processes() == []
    server.start()
    assert server.fetch_all("carol") == {uid: MESSAGE}


def test_dovecot_drop_connections(private_dovecot: Dovecot) -> None:
    server = private_dovecot
    server.add_user("dave")
    for abrupt in (False, True):
        with server.session("dave") as session:
            session.select("INBOX")
            assert server.drop_connections(abrupt=abrupt) == 1
            with pytest.raises((imaplib.IMAP4.abort, OSError)):
                session.noop()
        assert server.uids("dave") == []  # the server itself is still up


def test_users_added_while_running(dovecot: Dovecot) -> None:
    password = dovecot.add_user("late-user")
    with dovecot.session("late-user", password) as session:
        assert session.select("INBOX")[0] == "OK"
    dovecot.remove_user("late-user")
    with pytest.raises(imaplib.IMAP4.error):
        with dovecot.session("late-user", password):
            pass


def test_moto_put_get(moto_s3: MotoS3) -> None:
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="archive")
    s3.put_object(Bucket="archive", Key="2024/01/message.eml", Body=MESSAGE)
    assert s3.get_object(Bucket="archive", Key="2024/01/message.eml")["Body"].read() == MESSAGE


def test_moto_starts_empty(moto_s3: MotoS3) -> None:
    assert moto_s3.client().list_buckets()["Buckets"] == []


def test_moto_stop_start_keeps_state(moto_s3: MotoS3) -> None:
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="archive")
    s3.put_object(Bucket="archive", Key="kept", Body=b"before the outage")
    port = moto_s3.port

    moto_s3.stop()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.list_buckets()  # the pooled keep-alive connection was cut, and reconnecting is refused

    moto_s3.start()
    assert moto_s3.port == port
    assert s3.get_object(Bucket="archive", Key="kept")["Body"].read() == b"before the outage"


def test_moto_kill_loses_state(moto_s3: MotoS3) -> None:
    s3 = moto_s3.client()
    s3.create_bucket(Bucket="archive")
    moto_s3.kill()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.list_buckets()
    moto_s3.start()
    assert s3.list_buckets()["Buckets"] == []


def test_moto_pause_hangs(moto_s3: MotoS3) -> None:
    impatient = moto_s3.client(connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1})
    with moto_s3.down("pause"):
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            impatient.list_buckets()
    assert impatient.list_buckets()["Buckets"] == []


def test_postgres_runs_unprivileged_and_counts_statements(postgres: Postgres) -> None:
    import psycopg

    first, second = postgres.create_database(), postgres.create_database()
    with psycopg.connect(first, autocommit=True) as connection:
        before = postgres.statements(first)
        for number in range(3):
            connection.execute("SELECT %s", (number,))
    assert postgres.statements(first) == before + 3
    assert postgres.statements(second) == 0  # each test's database is its own
    if os.geteuid() == 0:  # PostgreSQL refuses root: the fixture runs it as another user
        assert pwd.getpwuid(os.stat(postgres.data).st_uid).pw_name != "root"
