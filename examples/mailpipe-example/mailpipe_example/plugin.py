"""Registers the ``maildir_drop`` (pull) and ``tcp_drop`` (push) connection
types and the ``example_jsonl`` sink.

Everything a plugin needs is here: typed registrations that carry the
callables the host calls for them (validation, a test, a collector that
spools before it deletes), and a sink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailpipe import hookimpl
from mailpipe.types import (
    Connection,
    ConnectionType,
    Setting,
    SinkType,
    TestResult,
    ValidationContext,
)

from mailpipe_example import tcp_drop
from mailpipe_example.maildir import collect_forever, maildir_problem
from mailpipe_example.sink import JsonLinesSink

TYPE = "maildir_drop"


@hookimpl
def mailpipe_connection_types() -> list[ConnectionType]:
    return [
        ConnectionType(
            name=TYPE,
            description="Collect messages dropped into a Maildir's new/ folder",
            receives="pull",
            provenance="maildir",
            settings=(
                Setting("path", "path", required=True, help="the Maildir (with new/, cur/, tmp/)"),
                Setting("poll_interval", "int", default=1, help="seconds between scans"),
            ),
            # What the host calls for connections of this type, and only for them.
            validate=validate,
            test=test,
            collect=collect_forever,
        ),
        ConnectionType(
            name="tcp_drop",
            description="Receive messages pushed over a minimal TCP protocol (see tcp_drop.py)",
            receives="push",
            settings=(Setting("listen", "str", required=True, help="HOST:PORT to listen on"),),
            validate=tcp_drop.validate,
            serve=tcp_drop.serve,
        ),
    ]


@hookimpl
def mailpipe_sink_types() -> list[SinkType]:
    return [
        SinkType(
            name="example_jsonl",
            description="Append each message (base64) and its metadata to a JSON-lines file",
            factory=JsonLinesSink,
            settings=(Setting("path", "path", required=True, help="the .jsonl file"),),
        )
    ]


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    problems = []
    if not Path(settings["path"]).is_absolute():
        problems.append(f"path {settings['path']!r} must be absolute")
    if int(settings.get("poll_interval", 1)) < 1:
        problems.append("poll_interval must be at least 1 second")
    return problems


async def test(connection: Connection, context: ValidationContext) -> TestResult:
    problem = maildir_problem(Path(connection.settings["path"]))
    return TestResult(ok=problem is None, error=problem or "")
