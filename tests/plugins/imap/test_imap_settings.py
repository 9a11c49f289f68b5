"""imap / imap_failover settings through the CLI: validation, secrets, warnings."""

from __future__ import annotations

from pathlib import Path

from tests.support.helpers import cli
from tests.support.peers.certs import CertBundle

from mailpipe.plugins.imap.client import encode_mailbox_name, uid_set


def add(config: Path, connection_type: str, *settings: str) -> object:
    args = ["connections", "add", connection_type, "--description", "t"]
    for setting in settings:
        args += ["--set", setting]
    return cli(config, *args)


BASE = ("server=imap.example.com", "username=journal@example.com", "password=s3cret-Pa55")


def test_plaintext_port_143_is_refused_with_the_reason(config_path: Path) -> None:
    result = add(config_path, "imap", *BASE, "port=143")
    assert result.code != 0
    assert "port 143 is plaintext IMAP" in result.err
    assert "implicit TLS only" in result.err and "993" in result.err


def test_defaults_and_secret_masked_everywhere(config_path: Path, certs: CertBundle) -> None:
    added = add(config_path, "imap", *BASE, f"ca_file={certs.ca_file}")
    assert added.code == 0, added
    shown = cli(config_path, "connections", "show", added.json["id"], check=True)
    settings = shown.json["settings"]
    assert settings["password"] == "********"
    assert settings["port"] == 993 and settings["mailbox"] == "INBOX"
    assert settings["after_archive"] == "delete" and settings["tls_verify"] is True
    assert shown.json["warnings"] == []
    assert shown.json["enabled"] is False
    for output in (added.out, shown.out, cli(config_path, "connections", "list").out):
        assert "s3cret-Pa55" not in output
    stored = (config_path.parent / "data").rglob("*")
    for path in stored:
        if path.is_file():
            assert b"s3cret-Pa55" not in path.read_bytes(), f"password in clear in {path}"


def test_tls_verify_false_is_allowed_but_warned(config_path: Path) -> None:
    added = add(config_path, "imap", *BASE, "tls_verify=false")
    assert added.code == 0, added
    assert any("tls_verify is false" in w for w in added.json["warnings"])
    shown = cli(config_path, "connections", "show", added.json["id"], check=True)
    assert any("tls_verify is false" in w for w in shown.json["warnings"])


def test_refusals_name_the_setting(config_path: Path, tmp_path: Path) -> None:
    cases = {
        ("server=imaps://imap.example.com:993",): "is not a host name",
        ("after_archive=move",): "needs the folder to move to",
        ("after_archive=move", "move_to=INBOX"): "is the mailbox being collected",
        ("move_to=Archive",): "only used with after_archive=move",
        ("after_archive=shred",): "after_archive must be one of delete, move, seen",
        ("poll_interval=0",): "poll_interval",
        ("port=70000",): "port 70000",
        ("timeout=120",): "timeout 120 must be a whole number of seconds from 1 to 50",
        (f"ca_file={tmp_path / 'missing.pem'}",): "does not exist",
    }
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cases[(f"ca_file={not_pem}",)] = "not a readable PEM"
    for settings, expected in cases.items():
        result = add(config_path, "imap", *BASE, *settings)
        assert result.code != 0 and expected in result.err, (settings, result)


def test_edit_revalidates(config_path: Path) -> None:
    connection_id = add(config_path, "imap", *BASE).json["id"]
    result = cli(config_path, "connections", "edit", connection_id, "--set", "port=143")
    assert result.code != 0 and "plaintext" in result.err
    edited = cli(config_path, "connections", "edit", connection_id, "--set", "after_archive=seen", check=True)
    assert edited.json["settings"]["after_archive"] == "seen"
    assert edited.json["settings"]["password"] == "********"


def test_failover_backs_up_must_be_an_smtp_o365_connection(config_path: Path) -> None:
    missing = add(config_path, "imap_failover", *BASE, "backs_up=cdoesnotexist")
    assert missing.code != 0 and "is not a connection" in missing.err
    imap_id = add(config_path, "imap", *BASE).json["id"]
    wrong = add(config_path, "imap_failover", *BASE, f"backs_up={imap_id}")
    assert wrong.code != 0 and "is a connection of type imap" in wrong.err
    o365 = cli(config_path, "connections", "add", "smtp_o365", "--description", "o365",
               "--set", "undeliverable_journal_address=undeliverable@example.com", check=True).json
    ok = add(config_path, "imap_failover", *BASE, f"backs_up={o365['id']}")
    assert ok.code == 0, ok
    assert ok.json["settings"]["backs_up"] == o365["id"]
    assert ok.json["settings"]["password"] == "********"
    # The login name differs from the undeliverable journal address: allowed, with a warning.
    assert "is not 'undeliverable@example.com'" in ok.err


def test_uid_sets_and_mailbox_names() -> None:
    assert uid_set([7, 1, 2, 3, 9, 10, 3]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert encode_mailbox_name("INBOX") == '"INBOX"'
    assert encode_mailbox_name("Tom & Jerry") == '"Tom &- Jerry"'
    # RFC 3501 section 5.1.3's own example
    assert encode_mailbox_name("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e") == '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'
