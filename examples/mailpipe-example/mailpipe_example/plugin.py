"""Registers the ``maildir_drop`` connection type and the ``example_jsonl`` sink.

Everything a plugin needs is here: typed registrations, validation, a
test, a collector that spools before it deletes, and a sink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailpipe import hookimpl
from mailpipe.types import (
    CollectContext,
    Connection,
    ConnectionType,
    Setting,
    SinkType,
    TestResult,
    ValidationContext,
)

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
        )
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


@hookimpl
def mailpipe_validate(
    connection_type: str, settings: dict[str, Any], context: ValidationContext
) -> list[str] | None:
    if connection_type != TYPE:
        return None
    problems = []
    if not Path(settings["path"]).is_absolute():
        problems.append(f"path {settings['path']!r} must be absolute")
    if int(settings.get("poll_interval", 1)) < 1:
        problems.append("poll_interval must be at least 1 second")
    return problems


@hookimpl
async def mailpipe_test(connection: Connection) -> TestResult | None:
    if connection.type != TYPE:
        return None
    problem = maildir_problem(Path(connection.settings["path"]))
    return TestResult(ok=problem is None, error=problem or "")


@hookimpl
async def mailpipe_collect(connection: Connection, context: CollectContext) -> None:
    if connection.type != TYPE:
        return None
    await collect_forever(connection, context)
