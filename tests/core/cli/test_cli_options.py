"""Global options mean the same anywhere on the line; help shows every action
and every installed connection type with its settings."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tests.support.cli import add_connection, files_under, leaf_commands, run_mailpipe
from mailpipe.cli.main import build_parser, parse_arguments


def required_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Values that make a leaf command's line parse (positionals and required options)."""
    words: list[str] = []
    for action in parser._actions:
        if not action.option_strings:
            words += [] if action.nargs in ("?", "*") else ["X"]
        elif action.required:
            words += [action.option_strings[0], "X"]
    return words


COMMANDS = [pytest.param(path, required_arguments(parser), id=" ".join(path)) for path, parser in leaf_commands(build_parser())]


@pytest.mark.parametrize("path, rest", COMMANDS)
def test_global_options_anywhere(path: tuple[str, ...], rest: list[str]) -> None:
    command = [*path, *rest]
    shapes = [
        ["--json", "--config", "p.toml", *command],
        [*command, "--json", "--config", "p.toml"],
        ["--json", *command, "--config", "p.toml"],
        [path[0], "--json", "--config", "p.toml", *path[1:], *rest],
    ]
    for argv in shapes:
        args = parse_arguments(argv)
        assert (args.json, args.config) == (True, "p.toml"), argv
    plain = parse_arguments(command)
    assert (plain.json, plain.config) == (False, None)
    # the last one wins, wherever it is
    assert parse_arguments(["--config", "a.toml", *command, "--config", "b.toml"]).config == "b.toml"


def test_config_before_the_command_acts_on_its_data_dir(config_path: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    connection = add_connection(config_path)
    deleted = run_mailpipe("--config", str(config_path), "--json", "connections", "delete", connection["id"], cwd=elsewhere)
    assert deleted.code == 0, deleted
    assert deleted.json["deleted"] is True and deleted.json["data_dir"] == str(config_path.parent / "data")
    listed = run_mailpipe("--json", "connections", "list", "--config", str(config_path), cwd=elsewhere)
    assert listed.json["connections"] == []
    assert files_under(elsewhere) == []  # no ./var


def test_json_before_the_command(config_path: Path) -> None:
    result = run_mailpipe("--json", "archive", "verify", "--config", str(config_path))
    assert result.code == 0, result
    assert result.json["checked"] == 0 and result.json["ok"] is True


@pytest.mark.parametrize(
    "command, actions",
    [
        ("connections", ["add", "list", "show", "edit", "enable", "disable", "test", "delete"]),
        ("archive", ["list", "show", "verify"]),
        ("spool", ["list", "retry"]),
        ("sinks", ["list", "test"]),
    ],
)
def test_help_lists_every_action(command: str, actions: list[str]) -> None:
    result = run_mailpipe(command, "--help")
    assert result.code == 0
    listed = result.out.split("actions:", 1)[1]
    for action in actions:
        assert f"\n    {action} " in listed, (action, result.out)


def test_add_help_lists_types_and_their_settings(example_installed: None) -> None:  # noqa: F811
    result = run_mailpipe("connections", "add", "--help")
    assert result.code == 0, result
    text = result.out
    for connection_type, keys in {
        "smtp_o365": ["undeliverable_journal_address"],
        "smtp_exchange": ["sender_servers"],
        "imap": ["server", "port", "username", "password", "after_archive"],
        "maildir_drop": ["path", "poll_interval"],  # the third-party example package
    }.items():
        section = re.search(rf"\n  {connection_type}: .*?(?=\n  \S|\Z)", text, re.S)
        assert section, (connection_type, text)
        for key in keys:
            assert f"\n      {key} (" in section.group(), (connection_type, key)
    assert "--set password=-" in text and "--set-file password=PATH" in text
