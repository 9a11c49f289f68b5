"""Every hook mailpipe calls, each with a working example.

A plugin is any module with functions named after these hooks and marked
``@mailpipe.hookimpl``; it is found through the ``mailpipe`` entry-point
group (see docs/plugins.md).

The hooks register things: connection types and sink types. What a
connection type *does* (validate its settings, test, collect or accept
mail, serve a push protocol) is a callable on its
:class:`~mailpipe.types.ConnectionType`, called by the host only for
connections of that type (as conda's registration objects carry their
callables), so no plugin ever checks "is this call for me?". Those
callables may be ``def`` or ``async def``; the registration hooks are plain
``def`` (pluggy knows nothing about coroutines).

Each example below runs as it stands (``tests/core/test_hook_docs.py`` runs it).
"""

from __future__ import annotations

import pluggy

from mailpipe.types import ConnectionType, SinkType

hookspec = pluggy.HookspecMarker("mailpipe")

# --- registration phase -----------------------------------------------------


@hookspec
def mailpipe_connection_types() -> list[ConnectionType]:
    """Register connection types.

    Return a list of :class:`~mailpipe.types.ConnectionType`, each with the
    callables its way of receiving needs: ``collect=`` for ``receives="pull"``,
    ``accept=`` for ``receives="smtp"``, ``serve=`` for ``receives="push"``;
    ``validate=``, ``test=`` and ``warnings=`` are optional. The host refuses
    a type without what its kind needs, and two plugins registering the same
    name, with an error naming the plugins.

    Example::

        import os

        import anyio

        from mailpipe import hookimpl
        from mailpipe.types import ConnectionType, Setting, TestResult

        def validate(settings, context):
            if not settings["path"].startswith("/"):
                return [f"path {settings['path']!r} must be absolute"]
            return []

        async def test(connection, context):
            if not os.path.isdir(connection.settings["path"]):
                return TestResult(ok=False, error="the Maildir does not exist")
            return TestResult(ok=True)

        async def collect(connection, context):
            new = os.path.join(connection.settings["path"], "new")
            while True:
                for name in sorted(os.listdir(new)):
                    with open(os.path.join(new, name), "rb") as file:
                        data = file.read()
                    # returns once the message is fsynced: only then delete it
                    await context.spool_bytes(data, {"source": {"file": name}})
                    os.unlink(os.path.join(new, name))
                await anyio.sleep(1)

        @hookimpl
        def mailpipe_connection_types():
            return [
                ConnectionType(
                    name="maildir",
                    description="Collect messages dropped into a Maildir",
                    receives="pull",
                    settings=(Setting("path", "path", required=True),),
                    validate=validate,
                    test=test,
                    collect=collect,
                )
            ]
    """


@hookspec
def mailpipe_sink_types() -> list[SinkType]:
    """Register sink types.

    Return a list of :class:`~mailpipe.types.SinkType`; ``factory`` builds
    the sink from the operator's ``[[sinks]]`` table. A sink may also be a
    :class:`~mailpipe.types.BatchSink` (``store_batch``) or a
    :class:`~mailpipe.types.ReadableArchive` (``entries``, ``find``,
    ``count``, ``verify``); the host recognises those by ``isinstance``.

    Example::

        from mailpipe import hookimpl
        from mailpipe.types import SinkType, TestResult

        class NullSink:
            def __init__(self, name, settings, context):
                self.name = name
            async def store(self, message):
                pass
            async def test(self):
                return TestResult(ok=True)
            async def aclose(self):
                pass

        @hookimpl
        def mailpipe_sink_types():
            return [SinkType(name="null", description="Discard", factory=NullSink)]
    """
