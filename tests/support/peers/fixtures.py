"""pytest fixtures for real peers; tests/conftest.py does ``from tests.support.peers.fixtures import *``.

(``tests`` is a package: pytest's default "prepend" import mode puts the
repository root on ``sys.path``, so tests and benchmarks import the one
support package as ``tests.support``.)

Fixtures and what they yield:

``certs`` (session)
    :class:`peers.certs.CertBundle` - private CA + server cert/key for
    localhost/127.0.0.1/::1.  Dovecot uses it; SMTP STARTTLS tests can use
    ``certs.server_context()`` / ``certs.client_context()``.
``untrusted_certs`` (session)
    :class:`peers.certs.CertBundle` - a self-signed cert for the same names
    that no client trusts (verification-failure tests).
``dovecot`` (session)
    a started :class:`peers.dovecot.Dovecot`, shared by the whole run.  Do not
    stop it from a test; use ``private_dovecot`` for outages.  Skips (or, with
    MAILPIPE_REQUIRE_PEERS=1, fails) when /usr/sbin/dovecot is absent or we are
    not root.
``private_dovecot`` (function)
    a started Dovecot of the test's own, to stop/kill/restart at will.
``fresh_imap_user`` (function)
    ``(user, password)`` of a new, unique user on the session ``dovecot``
    (removed from the passwd-file afterwards).
``aws_credentials`` (function)
    sets dummy AWS credentials and region us-east-1 in ``os.environ`` (so a
    ``mailpipe serve`` subprocess inherits them) and hides ~/.aws.
``moto_s3`` (function)
    a listening :class:`peers.s3.MotoS3` with **empty state**, plus
    ``aws_credentials``.  The host process is session-scoped
    (``moto_s3_server``) because spawning moto costs about a second; each
    test gets it reset, and after the test it is resumed/restarted if the
    test left it paused, stopped or killed.
``moto_s3_server`` (session)
    the underlying host; use ``moto_s3`` instead.
``haproxy`` (function)
    a factory for :class:`peers.haproxy.HAProxy` (Debian's haproxy, ``mode
    tcp``, ``send-proxy-v2`` to each node): ``haproxy([(host, port), ...])
    .start()``; stopped after the test.  Skips (or fails) without
    /usr/sbin/haproxy.
``postgres`` (session)
    a started :class:`peers.postgres.Postgres` (Debian's PostgreSQL 15, run
    as an unprivileged user). Skips (or, with MAILPIPE_REQUIRE_PEERS=1,
    fails) when the binaries are absent.
``postgres_url`` (function)
    the URL of a new, empty database on ``postgres``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import CertBundle, make_certs, make_untrusted_cert
from .dovecot import DOVECOT_BINARY, Dovecot, DovecotError
from .haproxy import haproxy
from .postgres import PG_BIN, Postgres, PostgresError
from .require import peer_missing
from .s3 import DUMMY_CREDENTIALS, MotoError, MotoS3

__all__ = [
    "aws_credentials",
    "certs",
    "dovecot",
    "fresh_imap_user",
    "haproxy",
    "moto_s3",
    "moto_s3_server",
    "postgres",
    "postgres_url",
    "private_dovecot",
    "untrusted_certs",
]

_user_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def untrusted_certs(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return make_untrusted_cert(tmp_path_factory.mktemp("untrusted-certs"))


def _new_dovecot(certs: CertBundle) -> Dovecot:
    """Start a Dovecot, or skip/fail (peer_missing) when this machine cannot run one."""
    if not os.path.exists(DOVECOT_BINARY):
        peer_missing(f"{DOVECOT_BINARY} is not installed (Debian: apt-get install dovecot-imapd)")
    if os.geteuid() != 0:
        peer_missing("the Dovecot fixture must run as root (it maps mail to the 'nobody' account)")
    server = Dovecot(certs)
    try:
        server.start()
    except DovecotError as error:
        server.close()
        peer_missing(f"dovecot did not start: {error}")
    return server


@pytest.fixture(scope="session")
def dovecot(certs: CertBundle) -> Iterator[Dovecot]:
    server = _new_dovecot(certs)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_dovecot(certs: CertBundle) -> Iterator[Dovecot]:
    server = _new_dovecot(certs)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_imap_user(dovecot: Dovecot) -> Iterator[tuple[str, str]]:
    if not dovecot.running:  # a test misused the shared server; bring it back
        dovecot.start()
    user = f"user{next(_user_numbers)}-{secrets.token_hex(3)}"
    password = dovecot.add_user(user, f"pw-{secrets.token_urlsafe(9)}")
    yield user, password
    dovecot.remove_user(user, wait=False)  # nobody logs in as it any more: no need to wait


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    return dict(DUMMY_CREDENTIALS)


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[MotoS3]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("werkzeug") is None:
        peer_missing("moto[server] is not installed (pip install 'moto[server]')")
    server = MotoS3()
    try:
        server.start()
    except MotoError as error:
        server.close()
        peer_missing(f"moto server did not start: {error}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def moto_s3(moto_s3_server: MotoS3, aws_credentials: dict[str, str]) -> Iterator[MotoS3]:
    moto_s3_server.start()  # also resumes a paused one / respawns a killed one
    moto_s3_server.reset()
    yield moto_s3_server
    moto_s3_server.start()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "postgres").exists():
        peer_missing(f"{PG_BIN}/postgres is not installed (Debian: apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        peer_missing("psycopg is not installed (pip install 'psycopg[binary,pool]')")
    server = Postgres()
    try:
        server.start()
    except (PostgresError, OSError, subprocess.SubprocessError) as error:
        server.close()
        peer_missing(f"postgres did not start: {error}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    return postgres.create_database()
