"""Commands that only read create no state, and say which data_dir they looked at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import O365, files_under, run_mailpipe

READ_ONLY = [
    (["connections", "list"], 0),
    (["connections", "show", "cnothere"], 1),
    (["connections", "edit", "cnothere", "--description", "d"], 1),
    (["connections", "enable", "cnothere"], 1),
    (["connections", "disable", "cnothere"], 1),
    (["connections", "test", "cnothere"], 1),
    (["connections", "delete", "cnothere"], 1),
    (["archive", "list"], 0),
    (["archive", "show", "abc"], 1),
    (["archive", "verify"], 0),
    (["spool", "list"], 0),
    (["spool", "list", "--quarantine"], 0),
    (["spool", "retry"], 0),
    (["spool", "retry", "01abc"], 1),
    (["sinks", "list"], 0),
    (["plugins"], 0),
]


@pytest.mark.parametrize("args, code", READ_ONLY, ids=[" ".join(a) for a, _ in READ_ONLY])
def test_read_only_commands_create_nothing_and_name_the_data_dir(tmp_path: Path, args: list[str], code: int) -> None:
    data_dir = str(tmp_path / "var")  # the embedded default, relative to the working directory
    human = run_mailpipe(*args, cwd=tmp_path)
    assert human.code == code, human
    assert data_dir in human.err and "Traceback" not in human.err
    machine = run_mailpipe(*args, "--json", cwd=tmp_path)
    assert machine.code == code, machine
    answer = machine.json if code == 0 else json.loads(machine.err)
    assert (answer["config"], answer["data_dir"], answer["state"]) == (None, data_dir, "none")
    assert files_under(tmp_path) == []


def test_add_creates_state_and_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    refused = run_mailpipe("connections", "add", "smtp_o365", "--description", "x", cwd=tmp_path)
    assert refused.code == 1 and "needs setting 'undeliverable_journal_address'" in refused.err
    assert files_under(tmp_path) == []  # bad input creates nothing either

    first = run_mailpipe("connections", "add", "smtp_o365", "--description", "x", *O365, cwd=tmp_path)
    assert first.code == 0, first
    assert f"created new state in {data_dir}" in first.err
    second = run_mailpipe("connections", "add", "smtp_o365", "--description", "y", *O365, "--json", cwd=tmp_path)
    assert second.json["state"] == "existing" and second.json["data_dir"] == str(data_dir)
    listed = run_mailpipe("--json", "connections", "list", cwd=tmp_path)
    assert len(listed.json["connections"]) == 2 and listed.json["state"] == "existing"
    assert run_mailpipe("spool", "list", "--json", cwd=tmp_path).json["messages"] == []
    assert not (data_dir / "spool").exists()  # reading the state adds nothing to it


def test_the_config_file_is_named(config_path: Path) -> None:
    result = run_mailpipe("sinks", "list", "--json", "--config", str(config_path))
    assert result.json["config"] == str(config_path) and result.json["state"] == "none"
    assert not (config_path.parent / "data").exists()
