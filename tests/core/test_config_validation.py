"""Every key of the operator's config is checked before anything happens.

Each bad value below is refused by `mailpipe serve --config` and by
`mailpipe config check` alike: exit code 1, one sentence naming the file, the
key and the value, no traceback, and nothing created next to the config (no
data_dir, no database, no secret key). A good config passes, and
`config check --json` shows what the server would run with.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from tests.support.helpers import MAILPIPE, cli, write_config

from mailpipe.cli.config import effective_sink, mask_url_password
from mailpipe.config import load_config
from mailpipe.connections.secrets import MASK
from mailpipe.types import Setting, SinkType


@dataclass(frozen=True)
class Bad:
    """Replace ``old`` by ``new`` in a good config; the error must hold every fragment."""

    old: str
    new: str
    fragments: tuple[str, ...]


def add(section: str, line: str, *fragments: str) -> Bad:
    if section == "plugins":  # the base config has no [plugins] table: put one before [pipeline]
        return Bad("[pipeline]\n", f"[plugins]\n{line}\n\n[pipeline]\n", fragments)
    return Bad(f"[{section}]\n", f"[{section}]\n{line}\n", fragments)


JOURNAL = 'journal_domain = "journal.test"'
DATA_DIR = 'data_dir = "data"'
BACKOFF_MAX = "backoff_max = 0.5"

BAD_VALUES = {
    "max_attempts-word": add("pipeline", 'max_attempts = "eight"', "[pipeline] max_attempts", '"eight"', "whole number"),
    "backoff_max-unit": Bad(BACKOFF_MAX, 'backoff_max = "5m"', ("[pipeline] backoff_max", '"5m"', "seconds")),
    "batch_size-negative": add("pipeline", "batch_size = -1", "[pipeline] batch_size", "not -1", "from 1 to"),
    "concurrency-zero": add("pipeline", "concurrency = 0", "[pipeline] concurrency", "not 0", "from 1 to"),
    "max_message_size-word": add("smtp", 'max_message_size = "big"', "[smtp] max_message_size", '"big"', "150MiB"),
    "max_message_size-tiny": add("smtp", "max_message_size = 10", "[smtp] max_message_size", "not 10", "1 KiB"),
    "proxy_protocol_from-string": add(
        "smtp", 'proxy_protocol_from = "10.0.0.5"', "[smtp] proxy_protocol_from", '"10.0.0.5"', "a list"
    ),
    "proxy_protocol_from-not-an-address": add(
        "smtp", 'proxy_protocol_from = ["10.0.0.300", "10.0.1.0/24"]', "[smtp] proxy_protocol_from",
        "'10.0.0.300' is not an IP address or CIDR range",
    ),
    "proxy_protocol-retired": add(
        "smtp", "proxy_protocol = true", "[smtp] proxy_protocol was replaced by proxy_protocol_from",
        "proxy_protocol_from = [",
    ),
    "accepted_domains-string": add(
        "smtp", 'accepted_domains = "example.com"', "[smtp] accepted_domains", '"example.com"', "a list"
    ),
    "plugins-allow-string": add("plugins", 'allow = "smtp_o365"', "[plugins] allow", '"smtp_o365"', "a list"),
    "journal_domain-not-a-domain": Bad(
        JOURNAL, 'journal_domain = "a b@c"', ("[smtp] journal_domain", '"a b@c"', "domain name")
    ),
    "journal_domain-number": Bad(JOURNAL, "journal_domain = 5", ("[smtp] journal_domain", "not 5", "domain name")),
    "unknown-server-key": add(
        "server", 'dat_dir = "x"', "unknown key [server] dat_dir", "did you mean data_dir?"
    ),
    "unknown-smtp-key": add("smtp", "proxy_protocl = true", "unknown key [smtp] proxy_protocl", "proxy_protocol_from?"),
    "unknown-pipeline-key": add("pipeline", "max_attempt = 3", "[pipeline] max_attempt", "did you mean max_attempts?"),
    "unknown-plugins-key": add("plugins", 'alow = ["imap"]', "[plugins] alow", "did you mean allow?"),
    "unknown-section": Bad("[pipeline]\n", "[pipelin]\n", ("unknown section [pipelin]", "did you mean pipeline?")),
    "log_level-unknown": add("server", 'log_level = "VERBOSE"', "[server] log_level", '"VERBOSE"', '"DEBUG"'),
    "data_dir-number": Bad(DATA_DIR, "data_dir = 5", ("[server] data_dir", "not 5", "directory path")),
    "data_dir-is-a-file": Bad(DATA_DIR, 'data_dir = "a-file"', ("[server] data_dir", "a-file", "is a file")),
    "listen-port": Bad(
        'listen = "127.0.0.1:', 'listen = "127.0.0.1:99999"\n# ', ("[smtp] listen", "99999", "from 1 to 65535")
    ),
    "line-length-below-rfc": add("smtp", "max_line_length = 100", "[smtp] max_line_length", "998"),
    # the base config's backoff_initial is 0.05
    "backoff-order": Bad(BACKOFF_MAX, "backoff_max = 0.01", ("[pipeline] backoff_max", "backoff_initial (0.05)")),
    "sink-required-string": Bad(
        'path = "archive"\n', 'path = "archive"\nrequired = "false"\n',
        ("sink 'filesystem': required", '"false"', "true or false"),
    ),
    "sink-unknown-key": Bad(
        'path = "archive"\n', 'path = "archive"\nfsynk = false\n', ("sink 'filesystem'", "fsynk", "did you mean fsync?")
    ),
}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAILPIPE, *command], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd,
        env={**os.environ, "MAILPIPE_CONFIG": ""},
    )


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "serve": lambda config: ["serve", "--config", str(config)],
    "config-check": lambda config: ["config", "check", "--config", str(config)],
}


def assert_refused(result: subprocess.CompletedProcess[str], directory: Path, before: set[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    sentence = result.stderr.strip()
    assert sentence.startswith("mailpipe: error: "), sentence
    for fragment in fragments:
        assert fragment in sentence, (fragment, sentence)
    assert {p.name for p in directory.iterdir()} == before, "something was created before the config was checked"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_value_is_one_sentence_naming_file_and_key(tmp_path: Path, case: Bad, command: str) -> None:
    config = write_config(tmp_path)
    text = config.read_text()
    assert case.old in text, case
    config.write_text(text.replace(case.old, case.new, 1))
    (tmp_path / "a-file").write_text("not a directory\n")
    before = {p.name for p in tmp_path.iterdir()}
    result = run(COMMANDS[command](config), cwd=tmp_path)
    assert_refused(result, tmp_path, before, str(config), *case.fragments)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    return tmp_path / "conf.d"


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[server]\ndata_dir = "donn\xe9es"\n'.encode("latin-1"))
    return path


def _invalid_toml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text('[server]\ndata_dir = "data"\n\n[smtp\nlisten = "127.0.0.1:2525"\n')
    return path


BAD_FILES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "directory": (_directory, ("is a directory", "TOML file")),
    "not-utf8": (_latin1, ("is not UTF-8", "line 2, column 17", "save it")),
    "invalid-toml": (_invalid_toml, ("not valid TOML", "line 4, column 6")),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_unreadable_config_file_is_one_sentence(tmp_path: Path, case: tuple, command: str) -> None:
    make, fragments = case
    config = make(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    result = run(COMMANDS[command](config), cwd=tmp_path)
    assert_refused(result, tmp_path, before, str(config), *fragments)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("[pipeline]\n", '[pipeline]\nmax_attempts = "eight"\nconcurrency = 0\n'))
    result = cli(config, "config", "check")
    assert result.code == 1
    errors = json.loads(result.err)["errors"]
    assert [e.split(": ", 1)[1].split(" must")[0] for e in errors] == [
        "[pipeline] max_attempts", "[pipeline] concurrency"
    ]


def test_good_config_check_shows_effective_values_and_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace(
            JOURNAL,
            f'{JOURNAL}\naccepted_domains = ["Contoso.com"]\nmax_message_size = "150MiB"',
        )
    )
    before = {p.name for p in tmp_path.iterdir()}
    result = cli(config, "config", "check", check=True)
    data = result.json
    assert data["config"] == str(config)
    assert data["effective"]["server"] == {"data_dir": str(tmp_path / "data"), "data_dir_exists": False, "log_level": "INFO"}
    assert data["effective"]["smtp"]["max_message_size"] == 150 * 1024 * 1024
    assert data["effective"]["smtp"]["accepted_domains"] == ["contoso.com"]
    assert data["effective"]["smtp"]["proxy_protocol_from"] == []  # a default, filled in
    assert data["effective"]["pipeline"]["max_attempts"] == 8 and data["effective"]["pipeline"]["backoff_initial"] == 0.05
    assert data["effective"]["sinks"] == [
        {
            "type": "filesystem", "name": "filesystem", "required": True,
            "path": str(tmp_path / "archive"), "fsync": True, "link_from_spool": True,
        }
    ]
    assert {p.name for p in tmp_path.iterdir()} == before

    human = run(["config", "check", "--config", str(config)], cwd=tmp_path)
    assert human.returncode == 0, human
    assert "[pipeline]\nmax_attempts = 8\n" in human.stdout
    assert "data_dir does not exist yet" in human.stdout


def test_size_strings_are_decimal_or_binary_units(tmp_path: Path) -> None:
    for written, size in (('"150MB"', 150_000_000), ('"150MiB"', 157_286_400), ("157286400", 157_286_400)):
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace(JOURNAL, f"{JOURNAL}\nmax_message_size = {written}"))
        assert load_config(config).smtp.max_message_size == size


def test_s3_credentials_are_refused_without_printing_them(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    config = write_config(
        tmp_path, sinks=f'[[sinks]]\ntype = "s3"\nbucket = "mail"\naws_secret_access_key = "{secret}"\n'
    )
    for command in COMMANDS.values():
        result = run(command(config), cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "credentials do not belong in the config file" in result.stderr
        assert secret not in result.stdout + result.stderr


def test_load_balancer_addresses_are_shown_normalised(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(
        "[smtp]\n", '[smtp]\nproxy_protocol_from = ["10.0.0.5/32", " 10.0.1.7/24", "2001:db8::1"]\n'))
    effective = cli(config, "config", "check", check=True).json["effective"]["smtp"]
    assert effective["proxy_protocol_from"] == ["10.0.0.5", "10.0.1.0/24", "2001:db8::1"]


def test_a_proxy_protocol_range_wider_than_one_subnet_is_warned_about(tmp_path: Path) -> None:
    """Trusting 0.0.0.0/0 (or any range wider than one balancer subnet) lets
    every host in it claim any client address and get past allowed_senders:
    config check says so (and still exits 0), naming the entry."""
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(
        "[smtp]\n", '[smtp]\nproxy_protocol_from = ["10.0.1.0/24", "0.0.0.0/0", "2001:db8::/48"]\n'))
    data = cli(config, "config", "check", check=True).json
    assert len(data["warnings"]) == 2
    assert "0.0.0.0/0 (4,294,967,296 addresses)" in data["warnings"][0]
    assert "2001:db8::/48" in data["warnings"][1] and "allowed_senders" in data["warnings"][1]
    human = run(["config", "check", "--config", str(config)], cwd=tmp_path)
    assert human.returncode == 0
    assert "mailpipe: warning: [smtp] proxy_protocol_from trusts 0.0.0.0/0" in human.stderr
    assert "10.0.1.0/24" not in human.stderr  # one subnet of balancers: no warning
    assert "[smtp]" in human.stdout and "warning" not in human.stdout  # the TOML stays clean

    (tmp_path / "quiet").mkdir()
    quiet = write_config(tmp_path / "quiet")
    assert cli(quiet, "config", "check", check=True).json["warnings"] == []


def test_effective_sink_masks_secrets() -> None:
    """A third-party sink type with a secret setting: masked by its declared kind,
    by a credential-like key name, and as the password inside a URL."""
    sink_type = SinkType(
        name="vault", description="", factory=lambda *a: None,
        settings=(Setting("passphrase", "secret"), Setting("url", "str"), Setting("retries", "int", default=3)),
    )
    config = load_config(None)
    table = {"type": "vault", "name": "v", "passphrase": "p1", "api_token": "t1", "url": "https://u:p2@h.example/x"}
    shown = effective_sink(config, table, sink_type)
    assert shown == {
        "type": "vault", "name": "v", "required": True, "passphrase": MASK, "api_token": MASK,
        "url": f"https://u:{MASK}@h.example/x", "retries": 3,
    }
    assert mask_url_password("http://127.0.0.1:9000/bucket") == "http://127.0.0.1:9000/bucket"
