"""What the CLI writes for people and for pipes: no traceback when the reader
goes away, ambiguous ids refused, secrets kept off the command line,
progress only on a terminal, control characters escaped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio

from tests.support.cli import O365, add_connection, files_under, populate, run_in_terminal, run_mailpipe
from tests.support.helpers import MAILPIPE, cli
from mailpipe.runtime import Runtime

IMAP = ["connections", "add", "imap", "--description", "mailbox",
        "--set", "server=imap.example.com", "--set", "username=journal@example.com"]


def stored_password(config: Path, connection_id: str) -> str:
    runtime = Runtime.open(str(config), create=False)
    try:
        return str(runtime.service.get(connection_id).settings["password"])
    finally:
        runtime.close()


# --- a reader that goes away (item 6) -----------------------------------------------


def test_closed_pipe_is_not_a_traceback(config_path: Path) -> None:
    add_connection(config_path)
    for args in (["connections", "list", "--json"], ["plugins"]):
        reading, writing = os.pipe()
        os.close(reading)  # the reader is gone before mailpipe writes a byte
        try:
            completed = subprocess.run([*MAILPIPE, *args, "--config", str(config_path)], stdout=writing,
                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=120)
        finally:
            os.close(writing)
        assert completed.returncode == 141, completed.stderr
        assert "Traceback" not in completed.stderr and "BrokenPipe" not in completed.stderr, completed.stderr


def test_head_of_a_long_listing(config_path: Path) -> None:
    runtime = Runtime.open(str(config_path))

    async def add_many() -> None:
        for number in range(300):  # well past a pipe's 64 KiB buffer
            await runtime.service.add("smtp_o365", f"connection {number}",
                                      {"undeliverable_journal_address": "ndr@customer.example"})

    anyio.run(add_many)
    runtime.close()
    mailpipe = " ".join(MAILPIPE)
    completed = subprocess.run(
        ["sh", "-c", f"{mailpipe} connections list --json --config '{config_path}' | head -1"],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.stdout == "{\n"
    assert "Traceback" not in completed.stderr and "BrokenPipe" not in completed.stderr, completed.stderr


# --- archive show with an ambiguous prefix (item 7) ----------------------------------


def test_ambiguous_prefix_is_refused_with_the_candidates(config_path: Path) -> None:
    state = populate(config_path)
    prefix = state["connection"]["id"]  # both archived messages are under it
    human = run_mailpipe("archive", "show", prefix, "--config", str(config_path))
    assert human.code == 1 and human.out == ""
    assert f"'{prefix}' matches 2 archived messages" in human.err
    assert all(candidate in human.err for candidate in state["archived"])
    machine = cli(config_path, "archive", "show", prefix)
    assert machine.code == 1
    assert sorted(json.loads(machine.err)["candidates"]) == sorted(state["archived"])
    one = cli(config_path, "archive", "show", state["archived"][0], check=True).json
    assert one["id"] == state["archived"][0]


# --- secrets without the command line (item 8) ------------------------------------


def test_password_from_a_file(config_path: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "password.txt"
    secret_file.write_text("from-a-file pa55\n")
    added = cli(config_path, *IMAP, "--set-file", f"password={secret_file}", check=True).json
    assert added["settings"]["password"] == "********"
    assert stored_password(config_path, added["id"]) == "from-a-file pa55"
    missing = cli(config_path, *IMAP, "--set-file", f"password={tmp_path / 'nope'}")
    assert missing.code == 1 and "--set-file password: cannot read" in missing.err


def test_password_prompt_on_a_terminal(config_path: Path) -> None:
    secret = "typed-not-shown 9"
    code, shown = run_in_terminal([*IMAP, "--set", "password=-", "--json", "--config", str(config_path)],
                                  answers={"password (not echoed): ": secret})
    assert code == 0, shown
    assert secret not in shown  # not echoed
    connection_id = json.loads(shown[shown.index("{"):])["id"]
    assert stored_password(config_path, connection_id) == secret


def test_password_prompt_refused_without_a_terminal(tmp_path: Path) -> None:
    result = run_mailpipe(*IMAP, "--set", "password=-", cwd=tmp_path)  # stdin is /dev/null
    assert result.code == 1
    assert "--set password=- asks for the value on the terminal, but standard input is not a terminal" in result.err
    assert "--set-file password=PATH" in result.err
    assert files_under(tmp_path) == []


# --- progress (item 9) ---------------------------------------------------------------


def test_verify_shows_progress_only_on_a_terminal(config_path: Path) -> None:
    populate(config_path)
    code, shown = run_in_terminal(["archive", "verify", "--config", str(config_path)])
    assert code == 0, shown
    assert "verifying" in shown and "/2" in shown and "msg" in shown, shown  # count, of how many, rate unit
    assert "2 messages checked, 0 mismatches" in shown

    piped = run_mailpipe("archive", "verify", "--config", str(config_path))
    assert piped.code == 0 and "verifying" not in piped.err + piped.out
    code, shown = run_in_terminal(["archive", "verify", "--json", "--config", str(config_path)])
    assert code == 0 and "verifying" not in shown
    assert json.loads(shown[shown.index("{"):])["checked"] == 2


# --- control characters in human output (issue 11, item 7) ------------------------------


def test_control_characters_are_escaped_for_people(config_path: Path) -> None:
    description = "evil\x1b[2J\nforged line\x07\u202e"
    added = cli(config_path, "connections", "add", "smtp_o365", "--description", description, *O365, check=True).json
    assert added["description"] == description  # JSON is exact
    for args in (["connections", "list"], ["connections", "show", added["id"]]):
        result = run_mailpipe(*args, "--config", str(config_path))
        assert result.code == 0, result
        assert "\x1b" not in result.out and "\x07" not in result.out and "\u202e" not in result.out
        assert not any(line.startswith("forged line") for line in result.out.splitlines())
        assert "evil\\x1b[2J\\nforged line\\x07\\u202e" in result.out
