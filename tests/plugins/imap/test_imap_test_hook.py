"""`mailpipe connections test ID` for imap connections, against a real Dovecot over TLS.

Every failure mode has its own message; a good connection tests ok.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.helpers import cli, free_port
from tests.support.imap import add_imap_connection
from tests.support.peers.certs import CertBundle
from tests.support.peers.dovecot import Dovecot


def run_test(config: Path, connection_id: str) -> dict:
    result = cli(config, "connections", "test", connection_id)
    data = result.json
    assert (result.code == 0) == data["test"]["ok"], result
    return data


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and then says nothing, ever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_good_connection_tests_ok(config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    user, password = fresh_imap_user
    connection_id = add_imap_connection(config_path, dovecot, user, password)
    data = run_test(config_path, connection_id)
    assert data["test"]["ok"] and data["status"] == "ok" and data["status_error"] == ""
    assert data["warnings"] == []
    shown = cli(config_path, "connections", "show", connection_id, check=True).json
    assert shown["status"] == "ok"


def test_move_to_folder_missing_is_a_warning(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    connection_id = add_imap_connection(
        config_path, dovecot, user, password, after_archive="move", move_to="Archived"
    )
    data = run_test(config_path, connection_id)
    assert data["test"]["ok"]
    assert any("'Archived' (move_to) does not exist yet" in w for w in data["warnings"])


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"server": "mail.example.invalid"}, "the host name 'mail.example.invalid' does not resolve"),
        ({"port": "REFUSED"}, "connection refused by 127.0.0.1:"),
        ({"port": "PLAIN"}, "the server does not speak TLS on this port"),
        ({"ca_file": ""}, "TLS certificate check failed for 127.0.0.1"),
        ({"password": "wrong-password"}, "authentication failed for user"),
        ({"mailbox": "No such folder"}, "mailbox 'No such folder' not found"),
    ],
    ids=["does-not-resolve", "refused", "plain-port", "certificate", "authentication", "mailbox"],
)
def test_each_failure_names_its_cause(
    config_path: Path,
    dovecot: Dovecot,
    fresh_imap_user: tuple[str, str],
    settings: dict[str, str],
    expected: str,
) -> None:
    user, password = fresh_imap_user
    ports = {"REFUSED": str(free_port()), "PLAIN": str(dovecot.imap_plain_port)}
    settings = {key: ports.get(value, value) for key, value in settings.items()}
    password = settings.pop("password", password)
    connection_id = add_imap_connection(config_path, dovecot, user, password, **settings)
    data = run_test(config_path, connection_id)
    assert not data["test"]["ok"]
    assert data["status"] == "failed"
    assert expected in data["status_error"], data["status_error"]
    assert password not in str(data)
    assert fresh_imap_user[1] not in str(data)


def test_untrusted_certificate_fails_and_tls_verify_false_passes_with_warning(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str], untrusted_certs: CertBundle
) -> None:
    user, password = fresh_imap_user
    wrong_ca = add_imap_connection(config_path, dovecot, user, password, ca_file=str(untrusted_certs.ca_file))
    failed = run_test(config_path, wrong_ca)
    assert "TLS certificate check failed" in failed["status_error"]
    assert "ca_file" in failed["status_error"]

    unchecked = add_imap_connection(config_path, dovecot, user, password, ca_file="", tls_verify="false")
    data = run_test(config_path, unchecked)
    assert data["test"]["ok"]
    assert data["warnings"] == ["tls_verify is false: the server's certificate is not checked"]


def test_silent_server_times_out_within_the_bound(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str], silent_port: int
) -> None:
    user, password = fresh_imap_user
    connection_id = add_imap_connection(config_path, dovecot, user, password, port=silent_port, timeout=2)
    data = run_test(config_path, connection_id)
    assert not data["test"]["ok"]
    assert "timed out" in data["status_error"]
    assert f"127.0.0.1:{silent_port}" in data["status_error"]


def test_failover_connection_tests_like_imap(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    o365 = cli(config_path, "connections", "add", "smtp_o365", "--description", "o365",
               "--set", f"undeliverable_journal_address={user}@contoso.com", check=True).json
    ok = add_imap_connection(config_path, dovecot, user, password, "imap_failover", backs_up=o365["id"])
    assert run_test(config_path, ok)["test"]["ok"]
    bad = add_imap_connection(
        config_path, dovecot, user, "wrong", "imap_failover", backs_up=o365["id"]
    )
    assert "authentication failed" in run_test(config_path, bad)["status_error"]
