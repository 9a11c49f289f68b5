"""Helpers shared by the tests: write a config, drive the CLI, run the server.

The server runs as a real ``mailpipe serve`` subprocess, as an operator runs
it, so tests can send it real traffic, SIGTERM it, or SIGKILL it mid-work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.peers.process import free_port as free_port  # tests import it from here

import anyio
import pytest

from mailpipe.errors import MessageRejected
from mailpipe.spool.queue import SpooledMessage
from mailpipe.types import TestResult

MAILPIPE = [sys.executable, "-m", "mailpipe.cli.main"]


def write_config(directory: Path, extra: str = "", smtp_port: int | None = None, sinks: str | None = None) -> Path:
    """A config under ``directory`` with SMTP on a free port; ``extra`` is appended TOML."""
    port = smtp_port or free_port()
    sink_text = sinks if sinks is not None else '[[sinks]]\ntype = "filesystem"\npath = "archive"\n'
    text = (
        '[server]\ndata_dir = "data"\n\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\njournal_domain = "journal.test"\n\n'
        '[pipeline]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n\n'
        f"{sink_text}\n{extra}\n"
    )
    if "[http]" not in extra:  # the console only where a test asks for it: no clash on port 8025
        text += '\n[http]\nlisten = ""\n'

    path = directory / "mailpipe.toml"
    path.write_text(text)
    return path


#: Runs a test that takes ``config_path`` on both state stores (see conftest.config_path).
BOTH_STORES = pytest.mark.parametrize("config_path", ["sqlite", "postgresql"], indirect=True)


def state_url_toml(url: str) -> str:
    return f'[state]\nurl = "{url}"\n'


def state_rows(config_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the state store ``config_path`` names (SQLite or PostgreSQL), read directly."""
    from mailpipe.config import load_config
    from mailpipe.runtime import open_state_store

    store = open_state_store(load_config(config_path), migrate=False)
    try:
        return store.query(sql, params)
    finally:
        store.close()


def smtp_port_of(config_path: Path) -> int:
    import tomllib

    listen = tomllib.loads(config_path.read_text())["smtp"]["listen"]
    return int(listen.rsplit(":", 1)[1])


class CliResult:
    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[:500]!r}, err={self.err[:500]!r})"


def cli(config: Path | None, *args: str, env: dict[str, str] | None = None, check: bool = False) -> CliResult:
    """Run ``mailpipe ARGS --json`` (the JSON flag is added for you)."""
    command = [*MAILPIPE, *args, "--json"]
    if config is not None:
        command += ["--config", str(config)]
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120,
        stdin=subprocess.DEVNULL,
    )
    result = CliResult(completed)
    if check and result.code != 0:
        raise AssertionError(f"mailpipe {' '.join(args)} failed: {result}")
    return result


class ServerProcess:
    """``mailpipe serve`` in a subprocess; its JSON log lines are collected."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
        preexec_fn: Any = None,
    ) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.preexec_fn = preexec_fn  # e.g. to lower a resource limit of the server
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        self.lines = []
        self.process = subprocess.Popen(
            [*MAILPIPE, "serve", "--config", str(self.config), *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            preexec_fn=self.preexec_fn,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_log("mailpipe is running", timeout)
        return self

    def _read(self) -> None:
        assert self.process and self.process.stderr
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in list(self.lines):
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"msg": line})
        return entries

    def wait_for_log(self, text: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if text in str(entry.get("msg", "")) and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            if self.process and self.process.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(
                    f"mailpipe serve exited with {self.process.returncode}:\n" + "\n".join(self.lines[-40:])
                )
            time.sleep(0.05)
        raise AssertionError(f"no log line {text!r} within {timeout} s:\n" + "\n".join(self.lines[-40:]))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an init system stops it; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as in a power cut."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.stop()


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (not a timing assertion:
    the bound only keeps a broken build from hanging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout} s")


def child_pids(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (a server's pipeline process, SMTP workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def archived_files(archive: Path) -> list[Path]:
    return sorted(p for p in archive.glob("*/??/*.eml"))


class FlakySink:
    """Fails ``failures`` times (refusing the message, by default), then stores in memory."""

    def __init__(self, name: str = "flaky", failures: int = 0, error: type[Exception] = MessageRejected) -> None:
        self.name = name
        self.failures = failures
        self.error = error
        self.calls = 0
        self.stored: dict[str, bytes] = {}

    async def store(self, message: SpooledMessage) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"{self.name} is down (call {self.calls})")
        self.stored[message.id] = message.path.read_bytes()

    async def test(self) -> TestResult:
        return TestResult(ok=True)

    async def aclose(self) -> None:
        pass


def with_pipeline(config: Path, **settings: Any) -> Path:
    """write_config already has a [pipeline] table; add keys to it."""
    text = config.read_text()
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    config.write_text(text.replace("[pipeline]\n", f"[pipeline]\n{lines}", 1))
    return config


def spool_messages(config: Path, count: int, tag: str = "m") -> list[str]:
    """Put committed messages into the server's spool, as the SMTP listener would."""
    from mailpipe.runtime import Runtime

    runtime = Runtime.open(str(config))

    async def write() -> list[str]:
        ids = []
        for index in range(count):
            raw = f"Subject: {tag}{index}\r\nMessage-ID: <{tag}{index}@test>\r\n\r\nbody {index}\r\n".encode()
            message = await runtime.spool.write_bytes(
                raw, {"connection_id": "conn1", "connection_type": "smtp_o365", "provenance": "smtp"}
            )
            ids.append(message.id)
        return ids

    try:
        return anyio.run(write)
    finally:
        runtime.close()
