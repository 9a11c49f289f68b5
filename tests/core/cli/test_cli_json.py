"""Every command's --json matches docs/cli.md: one object, the documented
keys, the shared config/data_dir/state, one timestamp format."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterator

import pytest

from tests.support.cli import O365, leaf_commands, populate
from tests.support.helpers import cli, write_config
from mailpipe.cli.main import build_parser
from tests.support.paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "cli.md"
SECTION = re.compile(r"^### `mailpipe ([^`]*)`\n(.*?)(?=^### |\Z)", re.M | re.S)
EXAMPLE = re.compile(r"^```json\n(.*?)^```", re.M | re.S)
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIMESTAMP_KEY = re.compile(r"(_at|^created|^updated|^status_time)$")
#: Values that a connection type, a sink or an intake defines: only their kind is checked.
FREE_FORM = {"settings", "metadata", "arrivals", "effective"}
#: Values whose shape depends on what was changed (the audit log's before/after): not checked.
ANY_SHAPE = {"before", "after"}
CONTEXT_KEYS = {"config", "data_dir", "state"}


def documented() -> dict[str, Any]:
    """``{"connections show ID": example or None}`` from the headings of docs/cli.md."""
    sections = {}
    for match in SECTION.finditer(DOC.read_text()):
        # "connections edit ID [--description TEXT] ..." → "connections edit ID"
        heading = " ".join(itertools.takewhile(lambda word: not word.startswith(("[", "--")), match.group(1).split()))
        example = EXAMPLE.search(match.group(2))
        sections[heading] = json.loads(example.group(1)) if example else None
    return sections


def command_path(heading: str) -> tuple[str, ...]:
    return tuple(word for word in heading.split() if word.islower())


def test_every_command_is_documented() -> None:
    paths = {command_path(heading) for heading in documented()}
    missing = [" ".join(path) for path, _ in leaf_commands(build_parser()) if path not in paths]
    assert not missing, f"docs/cli.md has no section for: {', '.join(missing)}"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each documented command run once on a populated state: heading → JSON."""
    config = write_config(tmp_path_factory.mktemp("cli-json"))
    state = populate(config)
    connection_id = state["connection"]["id"]
    password = tmp_path_factory.mktemp("secrets") / "password"
    password.write_text("correct horse battery\n")
    cli(config, "users", "add", "bob", "--role", "viewer", "--password-file", str(password), check=True)
    old_token = cli(config, "tokens", "create", "--user", "bob", check=True).json["id"]
    runs = {
        "plugins": ["plugins"],
        "connections add TYPE": ["connections", "add", "smtp_o365", "--description", "second", *O365],
        "connections list": ["connections", "list"],
        "connections show ID": ["connections", "show", connection_id],
        "connections edit ID": ["connections", "edit", connection_id, "--description", "renamed"],
        "connections enable ID": ["connections", "enable", connection_id],
        "connections disable ID": ["connections", "disable", connection_id],
        "connections test ID": ["connections", "test", connection_id],
        "archive list": ["archive", "list"],
        "archive show ID": ["archive", "show", state["archived"][0]],
        "archive verify": ["archive", "verify"],
        "spool list": ["spool", "list", "--quarantine"],
        "spool retry": ["spool", "retry"],
        "sinks list": ["sinks", "list"],
        "sinks test": ["sinks", "test"],
        "sinks test NAME": ["sinks", "test", "filesystem"],
        "config check": ["config", "check"],
        "connections delete ID": ["connections", "delete", connection_id],
        "users add NAME": ["users", "add", "alice", "--role", "admin", "--password-file", str(password)],
        "users list": ["users", "list"],
        "users passwd NAME": ["users", "passwd", "alice", "--password-file", str(password)],
        "tokens create": ["tokens", "create", "--user", "alice", "--name", "backup script"],
        "tokens list": ["tokens", "list"],
        "tokens revoke ID": ["tokens", "revoke", old_token],
        "users delete NAME": ["users", "delete", "bob"],
        "audit list": ["audit", "list"],
        "state migrate": ["state", "migrate"],
    }
    documented_json = {heading for heading, example in documented().items() if example is not None}
    assert documented_json == set(runs), "every documented JSON example is checked against a real run"
    return {heading: cli(config, *args, check=True).json for heading, args in runs.items()}


def assert_same_shape(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), (
            f"{where}: keys differ from docs/cli.md: undocumented {sorted(set(actual) - set(expected))}, "
            f"missing {sorted(set(expected) - set(actual))}"
        )
        for key, value in expected.items():
            if key in ANY_SHAPE:
                continue
            if key in FREE_FORM:
                assert isinstance(actual[key], type(value)), f"{where}.{key}"
            else:
                assert_same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        for item in actual if expected else []:
            assert_same_shape(expected[0], item, f"{where}[]")


def test_each_output_has_the_documented_keys(outputs: dict[str, Any]) -> None:
    examples = documented()
    for heading, output in outputs.items():
        assert_same_shape(examples[heading], output, heading)
        assert CONTEXT_KEYS <= set(output), heading
        assert output["state"] == "existing" and output["data_dir"].endswith("/data"), heading


def timestamps(data: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from timestamps(v, k)
    elif isinstance(data, list):
        for item in data:
            yield from timestamps(item, key)
    elif TIMESTAMP_KEY.search(key):
        yield key, data


def test_one_timestamp_format_everywhere(outputs: dict[str, Any]) -> None:
    seen = [(heading, key, value) for heading, output in outputs.items() for key, value in timestamps(output)]
    assert {key for _, key, value in seen if value} >= {"created", "updated", "status_time", "received_at",
                                                          "quarantined_at"}
    bad = [(heading, key, value) for heading, key, value in seen if value is not None and not RFC3339_MS.match(value)]
    assert not bad, bad
    documented_bad = [(heading, key, value) for heading, example in documented().items()
                      for key, value in timestamps(example) if value is not None and not RFC3339_MS.match(value)]
    assert not documented_bad, documented_bad


def test_arrivals_have_one_shape(outputs: dict[str, Any]) -> None:
    shown = outputs["archive show ID"]
    assert shown["arrivals"] == shown["metadata"]["arrivals"]
    assert all(isinstance(m["arrivals"], list) and m["arrivals"] for m in outputs["archive list"]["messages"])
    assert sorted(len(m["arrivals"]) for m in outputs["archive list"]["messages"]) == [1, 2]


def test_delete_returns_the_connection(outputs: dict[str, Any]) -> None:
    deleted = outputs["connections delete ID"]
    assert deleted["deleted"] is True
    assert set(deleted) - {"deleted"} == set(outputs["connections show ID"])


def test_sinks_test_name_is_one_object(outputs: dict[str, Any]) -> None:
    assert outputs["sinks test NAME"]["name"] == "filesystem" and outputs["sinks test NAME"]["ok"] is True
    assert [row["name"] for row in outputs["sinks test"]["sinks"]] == ["filesystem"]
