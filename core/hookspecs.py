"""Every hook mailpipe calls, grouped by phase, each with a working example.

A plugin is any module with functions named after these hooks and marked
``@mailpipe.hookimpl``; it is found through the ``mailpipe`` entry-point
group (see docs/plugins.md).

Async hooks: pluggy knows nothing about coroutines, so an ``async def``
implementation returns a coroutine object that pluggy treats as a result.
mailpipe therefore has **no firstresult hooks**: every implementation is
called, the host awaits every awaitable it gets back and then drops the
``None`` answers. A plugin answers only for its own connection type and
returns ``None`` (or an awaitable resolving to ``None``) otherwise; it may
be written ``def`` or ``async def`` as it likes.
"""

from __future__ import annotations

from typing import Any, Awaitable

import pluggy

from mailpipe.types import (
    CollectContext,
    Connection,
    ConnectionType,
    Decision,
    Envelope,
    SinkType,
    TestResult,
    ValidationContext,
)

hookspec = pluggy.HookspecMarker("mailpipe")

# --- registration phase -----------------------------------------------------


@hookspec
def mailpipe_connection_types() -> list[ConnectionType]:
    """Register connection types.

    Return a list of :class:`~mailpipe.types.ConnectionType`. Two plugins
    registering the same name is an error naming both.

    Example::

        from mailpipe import hookimpl
        from mailpipe.types import ConnectionType, Setting

        @hookimpl
        def mailpipe_connection_types():
            return [
                ConnectionType(
                    name="maildir",
                    description="Collect messages dropped into a Maildir",
                    receives="pull",
                    settings=(Setting("path", "path", required=True),),
                )
            ]
    """


@hookspec
def mailpipe_sink_types() -> list[SinkType]:
    """Register sink types.

    Return a list of :class:`~mailpipe.types.SinkType`; ``factory`` builds
    the sink from the operator's ``[[sinks]]`` table.

    Example::

        from mailpipe import hookimpl
        from mailpipe.types import SinkType, Setting

        class NullSink:
            def __init__(self, name, settings, context):
                self.name = name
            async def store(self, message):
                pass
            async def test(self):
                from mailpipe.types import TestResult
                return TestResult(ok=True)
            async def aclose(self):
                pass

        @hookimpl
        def mailpipe_sink_types():
            return [SinkType(name="null", description="Discard", factory=NullSink)]
    """


# --- connection phase -------------------------------------------------------


@hookspec
def mailpipe_validate(
    connection_type: str, settings: dict[str, Any], context: ValidationContext
) -> list[str] | None | Awaitable[list[str] | None]:
    """Check a connection's settings before they are stored.

    Called on ``connections add`` and on every ``edit``, after the host has
    converted values to their declared kinds and checked required ones.
    Return a list of problems, each a sentence a person can act on (empty
    when all is well), or ``None`` for another plugin's type. May normalise
    ``settings`` in place (e.g. lower-case an address).

    Example::

        @hookimpl
        def mailpipe_validate(connection_type, settings, context):
            if connection_type != "maildir":
                return None
            if not settings["path"].startswith("/"):
                return [f"path {settings['path']!r} must be absolute"]
            return []
    """


@hookspec
def mailpipe_test(
    connection: Connection, context: ValidationContext
) -> TestResult | None | Awaitable[TestResult | None]:
    """Check that a connection can work now (reach the server, log in...).

    ``context.find_connection(id)`` looks up other connections (a failover
    connection checks the one it backs up); an implementation that does not
    need it simply leaves the argument out, as pluggy allows.

    Return a :class:`~mailpipe.types.TestResult` for your own type, ``None``
    otherwise. The host records the status (ok / failed with the error
    text). Bound the time you spend; do not raise for expected failures.

    Example::

        @hookimpl
        async def mailpipe_test(connection):
            if connection.type != "maildir":
                return None
            import os
            if not os.path.isdir(connection.settings["path"]):
                return TestResult(ok=False, error="the Maildir does not exist")
            return TestResult(ok=True)
    """


@hookspec
def mailpipe_collect(
    connection: Connection, context: CollectContext
) -> None | Awaitable[None]:
    """Pull mail for an enabled ``receives="pull"`` connection, until cancelled.

    The host runs this in its own task while the connection is enabled and
    cancels it when the connection is disabled, edited or deleted. Spool
    each message with ``await context.spool_bytes(data, metadata)`` (or
    ``spool_chunks``) and only then remove it at the source: the spool call
    returns once the message is fsynced. Return ``None`` at once for
    another plugin's type.

    Example::

        @hookimpl
        async def mailpipe_collect(connection, context):
            if connection.type != "maildir":
                return None
            import anyio, pathlib
            new = pathlib.Path(connection.settings["path"]) / "new"
            while True:
                for path in sorted(new.iterdir()):
                    await context.spool_bytes(
                        path.read_bytes(),
                        {"provenance": "maildir", "source": {"file": path.name}},
                    )
                    path.unlink()
                await anyio.sleep(1)
    """


@hookspec
def mailpipe_accept(
    connection: Connection, envelope: Envelope
) -> Decision | None | Awaitable[Decision | None]:
    """Decide whether one SMTP recipient of a ``receives="smtp"`` connection is
    accepted.

    Called by the shared SMTP listener at ``RCPT TO`` for the connection
    whose unique address the recipient is. Return
    ``Decision.accept()``, ``Decision.deny(550, "5.7.1 ...")`` (permanent) or
    ``Decision.denysoft(451, "4.7.1 ...")`` (the sender retries), or ``None``
    for another plugin's type. Any refusal wins over an acceptance.

    Example::

        from mailpipe.types import Decision

        @hookimpl
        def mailpipe_accept(connection, envelope):
            if connection.type != "smtp_lab":
                return None
            if envelope.client_ip != "127.0.0.2":
                return Decision.deny(550, "5.7.1 sending server not allowed")
            return Decision.accept()
    """
