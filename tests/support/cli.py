"""Driving the CLI as a script or a person would: any working directory,
with or without --json, and a state with something in every part (a
connection, archived mail, a queued and a quarantined message)."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import anyio

from tests.support.helpers import MAILPIPE, CliResult, cli
from mailpipe.config import load_config
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import QUARANTINE, QUEUE, DeliveryState, Spool
from mailpipe.types import SinkContext

O365 = ("--set", "undeliverable_journal_address=journal-ndr@customer.example")


def run_mailpipe(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """``mailpipe ARGS`` exactly as given (no --json added), without a config in the environment."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MAILPIPE_CONFIG", "MAILPIPE_SECRET_KEY")}
    completed = subprocess.run(
        [*MAILPIPE, *args], capture_output=True, text=True, cwd=cwd, env={**environment, **(env or {})},
        timeout=120, stdin=subprocess.DEVNULL,
    )
    return CliResult(completed)


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def add_connection(config: Path, description: str = "Office 365") -> dict[str, Any]:
    return cli(config, "connections", "add", "smtp_o365", "--description", description, *O365, check=True).json


def populate(config_path: Path) -> dict[str, Any]:
    """A connection, two archived messages (one arrived twice), a queued and a
    quarantined message: every command then has something to show."""
    connection = add_connection(config_path)
    config = load_config(config_path)

    async def fill() -> dict[str, Any]:
        spool = Spool(config.spool_dir)
        scratch = Spool(config.data_dir / "scratch-spool")  # archive input, not left queued
        sink = FilesystemSink("filesystem", {"path": "archive"}, SinkContext(str(config.data_dir), str(config.config_dir)))
        first = await scratch.write_bytes(b"Subject: one\r\n\r\none\r\n", {"connection_id": connection["id"], "provenance": "smtp"})
        await sink.store(first)
        await sink.store(await scratch.write_bytes(first.path.read_bytes(), {"connection_id": connection["id"], "provenance": "smtp"}))
        await sink.store(await scratch.write_bytes(b"Subject: two\r\n\r\ntwo\r\n", {"connection_id": connection["id"]}))
        queued = await spool.write_bytes(b"Subject: queued\r\n\r\nq\r\n", {"connection_id": connection["id"]})
        held = await spool.write_bytes(b"Subject: held\r\n\r\nh\r\n", {"connection_id": connection["id"]})
        spool.save_state(held.id, DeliveryState(attempts=8, last_error="sink filesystem: disk on fire",
                                                quarantined_at="2026-12-01T10:00:00+00:00"))
        spool.move(held.id, QUEUE, QUARANTINE)
        return {"connection": connection, "queued": queued.id, "quarantined": held.id,
                "archived": [entry.id for entry in sink.entries()]}

    return anyio.run(fill)


def leaf_commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command line, as ``(("connections", "show"), its parser)``."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix, parser
        return
    for name, child in subparsers[0].choices.items():
        yield from leaf_commands(child, (*prefix, name))


def run_in_terminal(args: list[str], answers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, str]:
    """``mailpipe ARGS`` with a pseudo-terminal as its controlling terminal,
    stdin, stdout and stderr, as a person runs it; ``answers`` maps a prompt
    to the line typed when it appears. Returns the exit code and everything
    the terminal showed."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    environment = {k: v for k, v in os.environ.items() if k not in ("MAILPIPE_CONFIG", "MAILPIPE_SECRET_KEY")}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: becomes mailpipe, on a terminal of 24 x 120
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        os.execve(MAILPIPE[0], [*MAILPIPE, *args], environment)
    pending = dict(answers or {})
    shown = b""
    deadline = time.monotonic() + timeout  # only a bound for a broken build
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the child is gone and the terminal closed
            break
        if not chunk:
            break
        shown += chunk
        for prompt in [p for p in pending if p.encode() in shown]:
            os.write(terminal, pending.pop(prompt).encode() + b"\n")
    os.close(terminal)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")
