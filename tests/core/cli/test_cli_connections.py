"""The connection lifecycle through the CLI, as scripts drive it (--json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import BOTH_STORES, cli

O365 = ["--set", "undeliverable_journal_address=journal-ndr@customer.example"]


def connection_count(config: Path) -> int:
    return len(cli(config, "connections", "list", check=True).json["connections"])


@BOTH_STORES
def test_full_lifecycle(config_path: Path) -> None:
    added = cli(config_path, "connections", "add", "smtp_o365", "--description", "Office 365", *O365, check=True).json
    assert added["enabled"] is False
    assert added["status"] == "untested"
    assert added["address"].endswith("@journal.test")
    assert len(added["address"].split("@")[0]) >= 20  # unguessable
    connection_id = added["id"]

    listed = cli(config_path, "connections", "list", check=True).json["connections"]
    assert [c["id"] for c in listed] == [connection_id]

    shown = cli(config_path, "connections", "show", connection_id, check=True).json
    assert shown["settings"] == {"undeliverable_journal_address": "journal-ndr@customer.example"}

    assert cli(config_path, "connections", "enable", connection_id, check=True).json["enabled"] is True
    tested = cli(config_path, "connections", "test", connection_id, check=True).json
    assert tested["status"] == "ok" and tested["status_time"]
    # Audited twice: who started the test, and what came of it.
    entries = cli(config_path, "audit", "list", "--connection", connection_id, check=True).json["entries"]
    started, result = entries[-2:]
    assert (started["action"], started["after"]["status"]) == ("connection.test", "testing")
    assert (result["action"], result["before"]["status"], result["after"]["status"]) == (
        "connection.test_result", "testing", "ok")
    assert result["actor"] == started["actor"] and result["actor"].startswith("cli:")

    edited = cli(
        config_path, "connections", "edit", connection_id,
        "--set", "undeliverable_journal_address=other@customer.example", check=True,
    ).json
    assert edited["status"] == "untested"  # any edit resets the status
    assert edited["settings"]["undeliverable_journal_address"] == "other@customer.example"
    assert edited["address"] == added["address"]  # the journal address never changes

    assert cli(config_path, "connections", "disable", connection_id, check=True).json["enabled"] is False
    deleted = cli(config_path, "connections", "delete", connection_id, check=True).json
    assert deleted["deleted"] is True and deleted["id"] == connection_id
    assert connection_count(config_path) == 0


@BOTH_STORES
def test_addresses_are_unique(config_path: Path) -> None:
    addresses = {
        cli(config_path, "connections", "add", "smtp_o365", "--description", str(i), *O365, check=True).json["address"]
        for i in range(5)
    }
    assert len(addresses) == 5


@pytest.mark.parametrize(
    "args, expected",
    [
        (["add", "carrier_pigeon", "--description", "x"], "unknown connection type 'carrier_pigeon'"),
        (["add", "smtp_o365", "--description", "x"], "needs setting 'undeliverable_journal_address'"),
        (["add", "smtp_o365", "--description", "x", "--set", "undeliverable_journal_address=not-an-address"],
         "'not-an-address' is not an email address"),
        (["add", "smtp_o365", "--description", "x", *O365, "--set", "colour=blue"],
         "smtp_o365 has no setting 'colour'"),
        (["add", "smtp_o365", "--description", "x", "--set", "oops"], "--set 'oops' is not KEY=VALUE"),
        (["add", "smtp_exchange", "--description", "x", "--set", "sender_servers=10.0.0.300,192.0.2.0/24,fe80::zz"],
         "sender server '10.0.0.300' is not an IP address or CIDR range; sender server 'fe80::zz'"),
        (["show", "cdoesnotexist"], "no connection with id 'cdoesnotexist'"),
        (["enable", "cdoesnotexist"], "no connection with id 'cdoesnotexist'"),
        (["test", "cdoesnotexist"], "no connection with id 'cdoesnotexist'"),
        (["delete", "cdoesnotexist"], "no connection with id 'cdoesnotexist'"),
        (["edit", "cdoesnotexist", "--set", "a=b"], "no connection with id 'cdoesnotexist'"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(config_path: Path, args: list[str], expected: str) -> None:
    result = cli(config_path, "connections", *args)
    assert result.code != 0
    assert expected in result.err, result
    assert "Traceback" not in result.err
    assert result.out == ""
    assert connection_count(config_path) == 0


@BOTH_STORES
def test_bad_edit_changes_nothing(config_path: Path) -> None:
    added = cli(config_path, "connections", "add", "smtp_exchange", "--description", "ex",
                "--set", "sender_servers=127.0.0.2/32", check=True).json
    result = cli(config_path, "connections", "edit", added["id"], "--set", "sender_servers=300.1.1.1")
    assert result.code == 1 and "'300.1.1.1' is not an IP address" in result.err
    shown = cli(config_path, "connections", "show", added["id"], check=True).json
    assert shown["settings"]["sender_servers"] == ["127.0.0.2/32"]
    assert shown["updated"] == added["updated"]


def test_accepted_domains_are_enforced(tmp_path: Path) -> None:
    from tests.support.helpers import write_config

    config = write_config(tmp_path, extra="")
    text = config.read_text().replace('journal_domain = "journal.test"',
                                      'journal_domain = "journal.test"\naccepted_domains = ["customer.example"]')
    config.write_text(text)
    bad = cli(config, "connections", "add", "smtp_o365", "--description", "x",
              "--set", "undeliverable_journal_address=ndr@elsewhere.example")
    assert bad.code == 1 and "accepted domains (customer.example)" in bad.err
    cli(config, "connections", "add", "smtp_o365", "--description", "x", *O365, check=True)


def test_errors_without_json_are_plain_sentences(config_path: Path) -> None:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "mailpipe.cli.main", "connections", "show", "nope", "--config", str(config_path)],
        capture_output=True, text=True,
    )
    assert completed.returncode == 1
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mailpipe: error: no connection with id 'nope'")


def test_missing_config_file_is_explained(tmp_path: Path) -> None:
    result = cli(tmp_path / "nope.toml", "connections", "list")
    assert result.code == 1 and "does not exist" in result.err and "Traceback" not in result.err
