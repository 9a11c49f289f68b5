"""The running server: hot reload, clean shutdown, crash safety, the example plugin end to end.

These drive a real `mailpipe serve` subprocess with the example package's
Maildir drop-folder connection type (tests pip-install it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.helpers import ServerProcess, archived_files, cli, wait_until, write_config

pytestmark = pytest.mark.usefixtures("example_installed")


def make_maildir(root: Path) -> Path:
    for name in ("new", "cur", "tmp"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def drop(maildir: Path, name: str, raw: bytes) -> Path:
    tmp = maildir / "tmp" / name
    tmp.write_bytes(raw)
    final = maildir / "new" / name
    os.rename(tmp, final)
    return final


def add_maildir_connection(config: Path, maildir: Path) -> str:
    added = cli(config, "connections", "add", "maildir_drop", "--description", "drop",
                "--set", f"path={maildir}", check=True).json
    return str(added["id"])


def test_hot_reload_enable_disable_delete(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    maildir = make_maildir(tmp_path / "maildir")
    archive = tmp_path / "archive"
    connection_id = add_maildir_connection(config, maildir)
    with ServerProcess(config) as server:
        first = drop(maildir, "1", b"Subject: one\r\n\r\n1\r\n")
        cli(config, "connections", "enable", connection_id, check=True)
        wait_until(lambda: not first.exists(), message="enabled connection did not start collecting")
        wait_until(lambda: len(archived_files(archive)) == 1)
        server.wait_for_log("starting collector", connection=connection_id)

        cli(config, "connections", "disable", connection_id, check=True)
        server.wait_for_log("stopping collector", connection=connection_id)
        second = drop(maildir, "2", b"Subject: two\r\n\r\n2\r\n")
        cli(config, "connections", "enable", connection_id, check=True)
        wait_until(lambda: not second.exists(), message="re-enabled connection did not collect")

        cli(config, "connections", "delete", connection_id, check=True)
        wait_until(lambda: len([e for e in server.logs() if e.get("msg") == "stopping collector"]) >= 2)
        third = drop(maildir, "3", b"Subject: three\r\n\r\n3\r\n")
        # the deleted connection's collector is gone: prove it by enabling a new one
        # on another folder and seeing that one collect while the old folder keeps its file
        other = make_maildir(tmp_path / "other")
        new_id = add_maildir_connection(config, other)
        cli(config, "connections", "enable", new_id, check=True)
        marker = drop(other, "4", b"Subject: four\r\n\r\n4\r\n")
        wait_until(lambda: not marker.exists())
        assert third.exists()
        wait_until(lambda: len(archived_files(archive)) == 3, timeout=30)
        assert server.stop() == 0
    assert third.exists()


def test_crash_after_acknowledgement_loses_nothing(tmp_path: Path) -> None:
    """Spooled (and removed at the source), SIGKILL before the sink stored it,
    restart: archived exactly once."""
    blocked = tmp_path / "archive"
    blocked.write_text("a file where the archive directory should be: the sink fails")
    config = write_config(tmp_path)
    # Enough attempts that the message is still queued, not quarantined, however
    # long the machine takes between the first failure and the kill.
    config.write_text(config.read_text().replace("backoff_max = 0.5", "backoff_max = 0.5\nmax_attempts = 100000"))
    maildir = make_maildir(tmp_path / "maildir")
    connection_id = add_maildir_connection(config, maildir)
    cli(config, "connections", "enable", connection_id, check=True)
    raw = b"Subject: precious\r\n\r\nmust survive a crash\r\n"
    server = ServerProcess(config).start()
    try:
        dropped = drop(maildir, "precious", raw)
        wait_until(lambda: not dropped.exists(), message="message was not collected")  # acknowledged
        server.wait_for_log("sink unavailable; will retry")  # a file where the archive should be: the operator fixes it
        queued = cli(config, "spool", "list", check=True).json["messages"]
        assert len(queued) == 1 and queued[0]["connection_id"] == connection_id
    finally:
        server.kill()
    blocked.unlink()  # the operator repairs the sink
    with ServerProcess(config):
        wait_until(lambda: archived_files(blocked) and not cli(config, "spool", "list", check=True).json["messages"],
                   timeout=30, message="the spooled message was not delivered after the restart")
    [stored] = archived_files(blocked)
    assert stored.read_bytes() == raw
    metadata = json.loads(stored.with_suffix(".json").read_text())
    assert len(metadata["arrivals"]) == 1
    assert metadata["arrivals"][0]["provenance"] == "maildir"


def test_sigterm_stops_cleanly_and_keeps_undelivered_mail(tmp_path: Path) -> None:
    blocked = tmp_path / "archive"
    blocked.write_text("blocks the sink")
    config = write_config(tmp_path)
    maildir = make_maildir(tmp_path / "maildir")
    cli(config, "connections", "enable", add_maildir_connection(config, maildir), check=True)
    server = ServerProcess(config).start()
    drop(maildir, "m", b"Subject: m\r\n\r\nm\r\n")
    server.wait_for_log("sink unavailable; will retry")  # a file where the archive should be: the operator fixes it
    assert server.stop() == 0
    assert any(e.get("msg") == "mailpipe stopped" for e in server.logs())
    assert len(cli(config, "spool", "list", check=True).json["messages"]) == 1


def test_quarantine_and_retry_through_the_cli(tmp_path: Path) -> None:
    blocked = tmp_path / "archive"
    blocked.write_text("blocks the sink")
    config = write_config(tmp_path, extra="")
    # a file where the archive should be is an outage of the sink (the operator's to fix):
    # quarantined after outage_retry_for, not after max_attempts
    config.write_text(config.read_text().replace("backoff_max = 0.5", 'backoff_max = 0.5\noutage_retry_for = "1s"'))
    maildir = make_maildir(tmp_path / "maildir")
    cli(config, "connections", "enable", add_maildir_connection(config, maildir), check=True)
    with ServerProcess(config) as server:
        drop(maildir, "q", b"Subject: q\r\n\r\nq\r\n")
        server.wait_for_log("message quarantined")
        [item] = cli(config, "spool", "list", "--quarantine", check=True).json["messages"]
        assert item["attempts"] >= 2 and "sink filesystem" in item["reason"]
        blocked.unlink()
        assert cli(config, "spool", "retry", check=True).json["retried"] == [item["spool_id"]]
        wait_until(lambda: len(archived_files(blocked)) == 1, timeout=30)
    assert cli(config, "spool", "list", "--quarantine", check=True).json["messages"] == []


def test_example_vendor_sink_end_to_end(tmp_path: Path) -> None:
    sinks = (
        '[[sinks]]\ntype = "filesystem"\npath = "archive"\n\n'
        '[[sinks]]\ntype = "example_jsonl"\npath = "vendor/archive.jsonl"\n'
    )
    config = write_config(tmp_path, sinks=sinks)
    maildir = make_maildir(tmp_path / "maildir")
    cli(config, "connections", "enable", add_maildir_connection(config, maildir), check=True)
    assert [s["type"] for s in cli(config, "sinks", "list", check=True).json["sinks"]] == ["filesystem", "example_jsonl"]
    assert all(r["ok"] for r in cli(config, "sinks", "test", check=True).json["sinks"])
    raw = b"Subject: vendor\r\n\r\n\xe2\x82\xac\r\n"
    with ServerProcess(config):
        drop(maildir, "v", raw)
        vendor_file = tmp_path / "vendor" / "archive.jsonl"
        wait_until(lambda: vendor_file.exists() and vendor_file.read_text().strip(), timeout=30)
    import base64

    [record] = [json.loads(line) for line in vendor_file.read_text().splitlines()]
    assert base64.b64decode(record["raw"]) == raw
    assert record["metadata"]["provenance"] == "maildir"


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _push(port: int, raw: bytes) -> str:
    """One delivery over the example's tcp_drop protocol: the message, then
    our half of the connection closed; the answer comes once it is durable."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(raw)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    return answer.decode()


def _push_when_listening(port: int, raw: bytes) -> str:
    answers: list[str] = []

    def attempt() -> bool:
        try:
            answers.append(_push(port, raw))
        except ConnectionRefusedError:  # the listener is not up yet
            return False
        return True

    wait_until(attempt, timeout=30, message="the push listener never accepted a connection")
    return answers[-1]


def test_third_party_push_protocol_end_to_end(tmp_path: Path) -> None:
    """A connection type of a push protocol that is neither SMTP nor pull
    (the example's tcp_drop) archives what it receives, under its connection,
    with the provenance the host stamps from the registration."""
    config = write_config(tmp_path)
    port = _free_loopback_port()
    added = cli(config, "connections", "add", "tcp_drop", "--description", "push",
                "--set", f"listen=127.0.0.1:{port}", check=True).json
    assert added["address"] is None  # journal addresses are for SMTP types only
    cli(config, "connections", "enable", added["id"], check=True)
    raw = b"Subject: pushed\r\n\r\npushed over tcp_drop\r\n"
    with ServerProcess(config) as server:
        server.wait_for_log("starting push listener", type="tcp_drop")
        answer = _push_when_listening(port, raw)
        assert answer.startswith("OK "), answer
        wait_until(lambda: len(archived_files(tmp_path / "archive")) == 1, timeout=30)
    [stored] = archived_files(tmp_path / "archive")
    assert stored.read_bytes() == raw
    [arrival] = json.loads(stored.with_suffix(".json").read_text())["arrivals"]
    assert arrival["connection_id"] == added["id"]
    assert arrival["provenance"] == "tcp_drop"
