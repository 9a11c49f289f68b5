"""Archived mail, the spool and the state database are not world-readable
(issue 11, item 5), whatever the umask the server was started with."""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from pathlib import Path

import pytest

from tests.support.helpers import ServerProcess, cli
from tests.support.smtp import make_setup, queue_id_of, send, wait_for_arrival

pytestmark = pytest.mark.peer

SENDER = "journal-ndr@example.com"


def usual_umask() -> None:
    os.umask(0o022)


def modes_under(*roots: Path) -> dict[Path, int]:
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            found[path] = os.lstat(path).st_mode
    return found


def archive_mail_with(tmp_path: Path, server_lines: str = "") -> tuple[Path, Path]:
    """Start under umask 022, take one message over SMTP, archive it, stop."""
    setup = make_setup(tmp_path)
    if server_lines:
        setup.config.write_text(setup.config.read_text().replace("[server]\n", f"[server]\n{server_lines}", 1))
    # a reusable spool file left world-readable by an older version
    free = tmp_path / "data" / "spool" / "free"
    free.mkdir(parents=True)
    (free / "0123456789abcdef").write_bytes(b"")
    os.chmod(free / "0123456789abcdef", 0o644)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    with ServerProcess(setup.config, preexec_fn=usual_umask):
        for index in range(3):
            with contextlib.closing(setup.client()) as client:
                raw = f"Subject: private {index}\r\n\r\nconfidential\r\n".encode()
                code, text, _ = send(client, SENDER, [setup.address("o365")], raw)
            assert code == 250, text
            wait_for_arrival(setup.archive, queue_id_of(text))
    assert cli(setup.config, "connections", "list", check=True).json["connections"]
    return tmp_path / "data", setup.archive


def test_nothing_is_group_or_world_readable_by_default(tmp_path: Path) -> None:
    data, archive = archive_mail_with(tmp_path)
    modes = modes_under(data, archive)
    names = {path.name for path in modes}
    assert {"mailpipe.db", "secret.key"} <= names and any(n.endswith(".eml") for n in names)
    assert any(n.endswith(".json") for n in names)
    open_to_others = {str(p): oct(stat.S_IMODE(m)) for p, m in modes.items() if m & 0o077}
    assert open_to_others == {}


def test_a_configured_group_may_read_and_nobody_else(tmp_path: Path) -> None:
    groups = [g for g in os.getgroups() if g != os.getgid()] or [os.getgid()]
    name = grp.getgrgid(groups[0]).gr_name
    data, archive = archive_mail_with(tmp_path, f'group = "{name}"\n')
    modes = modes_under(data, archive)
    for path, mode in modes.items():
        assert not mode & 0o027, (path, oct(mode))  # never group-writable, never world-anything
        if path.name != "secret.key":
            assert path.stat().st_gid == groups[0], path
        if stat.S_ISDIR(mode):
            assert mode & 0o050 == 0o050, (path, oct(mode))
    assert stat.S_IMODE(modes[data / "secret.key"]) == 0o600  # the key stays the owner's
    assert modes[archive] & 0o040 and any(m & 0o040 for p, m in modes.items() if p.suffix == ".eml")


def test_an_unknown_group_is_explained(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    setup.config.write_text(setup.config.read_text().replace("[server]\n", '[server]\ngroup = "no-such-group-x"\n', 1))
    result = cli(setup.config, "connections", "list")
    assert result.code != 0 and "[server] group 'no-such-group-x' does not exist" in result.err
