"""The one place where plugins are loaded and what they registered is called.

Plugins come from the entry-point group ``mailpipe`` — the built-in ones
too. The operator may allow or block plugins by name in ``[plugins]``, and
``MAILPIPE_LOAD_PLUGINS=a,b`` loads only the named ones (handy for tests and
for bisecting a misbehaving plugin). A third-party plugin that fails to
import is recorded and skipped; ``mailpipe plugins`` shows why.

pluggy finds and registers plugins and calls their registration hooks.
What a connection type does (validate, test, collect, accept, serve) is a
callable on its registration (:class:`~mailpipe.types.ConnectionType`), and
the host calls it only for connections of that type, as conda's plugin
manager calls the registration it picked: no plugin is asked about a
connection that is not its own. The host checks at load time that each type
gives what its way of receiving needs.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from mailpipe import hookspecs
from mailpipe.config import PluginsConfig
from mailpipe.errors import PluginError
from mailpipe.types import (
    CALLABLE_FIELDS,
    REQUIRED_BY_KIND,
    CollectContext,
    Connection,
    ConnectionType,
    Envelope,
    IntakeContext,
    SinkType,
    TestResult,
    ValidationContext,
)

ENTRY_POINT_GROUP = "mailpipe"
log = logging.getLogger("mailpipe.plugins")


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    target: str
    error: str


@dataclass
class PluginInfo:
    name: str
    version: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    connection_types: list[str] = field(default_factory=list)
    sink_types: list[str] = field(default_factory=list)


class PluginHost:
    """Loads plugins, keeps their registrations and calls a type's callables."""

    def __init__(self, settings: PluginsConfig | None = None) -> None:
        self.settings = settings or PluginsConfig()
        self.manager = pluggy.PluginManager("mailpipe")
        self.manager.add_hookspecs(hookspecs)
        self.broken: list[BrokenPlugin] = []
        self.skipped: list[str] = []
        self.infos: dict[str, PluginInfo] = {}
        self.connection_types: dict[str, ConnectionType] = {}
        self.sink_types: dict[str, SinkType] = {}

    # --- loading -----------------------------------------------------------

    def load_entry_points(self) -> None:
        only = _env_list("MAILPIPE_LOAD_PLUGINS")
        seen: set[str] = set()
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(entry_point.name)
            if not self._wanted(entry_point.name, only):
                self.skipped.append(entry_point.name)
                continue
            if self.manager.has_plugin(entry_point.name):
                continue
            try:
                module = entry_point.load()
            except Exception as error:  # a broken plugin must not take the host down
                self.broken.append(
                    BrokenPlugin(entry_point.name, entry_point.value, f"{type(error).__name__}: {error}")
                )
                log.warning(
                    "plugin failed to import and was skipped",
                    extra={"plugin": entry_point.name, "error": str(error)},
                )
                continue
            self.register(module, entry_point.name, _distribution_of(entry_point))
            problem = self._load_problem(entry_point.name)
            if problem:
                self.manager.unregister(name=entry_point.name)
                self.infos.pop(entry_point.name, None)
                self.broken.append(BrokenPlugin(entry_point.name, entry_point.value, problem))
        self.collect_registrations()

    def register(self, module: ModuleType | object, name: str, dist: tuple[str, str] = ("", "")) -> None:
        self.manager.register(module, name=name)
        self.infos[name] = PluginInfo(name=name, distribution=dist[0], version=dist[1])

    def _load_problem(self, plugin_name: str) -> str | None:
        """Why a just-registered plugin cannot be used (a hook name mailpipe
        does not have, a registration that is not what its kind needs), so
        that it is skipped and reported like one that fails to import."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as error:
            return _hook_typo(error)
        try:
            for owner, connection_type in self._registrations("mailpipe_connection_types", ConnectionType):
                if owner == plugin_name:
                    _check_kind(connection_type, owner)
            self._registrations("mailpipe_sink_types", SinkType)
        except PluginError as error:
            return str(error)
        return None

    def _wanted(self, name: str, only: list[str] | None) -> bool:
        if only is not None and name not in only:
            return False
        if self.settings.allow is not None and name not in self.settings.allow:
            return False
        return name not in self.settings.block

    def collect_registrations(self) -> None:
        """Gather connection and sink types; a name registered twice is an error."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as error:
            raise PluginError(_hook_typo(error)) from None
        self.connection_types.clear()
        self.sink_types.clear()
        ct_owner: dict[str, str] = {}
        sink_owner: dict[str, str] = {}
        for plugin_name, plugin in self.manager.list_name_plugin():
            info = self.infos.setdefault(plugin_name, PluginInfo(plugin_name, "", ""))
            info.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])
            info.connection_types, info.sink_types = [], []
        for plugin_name, connection_type in self._registrations("mailpipe_connection_types", ConnectionType):
            _check_kind(connection_type, plugin_name)
            _claim(ct_owner, "connection type", connection_type.name, plugin_name)
            self.connection_types[connection_type.name] = connection_type
            self.infos[plugin_name].connection_types.append(connection_type.name)
        for plugin_name, sink_type in self._registrations("mailpipe_sink_types", SinkType):
            _claim(sink_owner, "sink type", sink_type.name, plugin_name)
            self.sink_types[sink_type.name] = sink_type
            self.infos[plugin_name].sink_types.append(sink_type.name)

    def _registrations(self, hook_name: str, kind: type) -> list[tuple[str, Any]]:
        """``(plugin name, registered object)`` for every answer to one registration hook.

        pluggy's hook call returns every plugin's answers in one flat list;
        the host needs to know which plugin registered what (to name both in
        a clash, and for ``mailpipe plugins``), so it calls each plugin's
        implementation through pluggy's public ``HookImpl``.
        """
        caller = getattr(self.manager.hook, hook_name)
        registered: list[tuple[str, Any]] = []
        for implementation in caller.get_hookimpls():
            plugin_name = implementation.plugin_name
            result = implementation.function()
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # never awaited: say so instead of a RuntimeWarning
                raise PluginError(
                    f"plugin {plugin_name!r}: {hook_name} must be a plain `def` returning a list, "
                    "not `async def`"
                )
            for item in result or []:
                if not isinstance(item, kind):
                    raise PluginError(
                        f"plugin {plugin_name!r}: {hook_name} returned {item!r}; "
                        f"return {kind.__name__} objects (see docs/plugins.md)"
                    )
                registered.append((plugin_name, item))
        return registered

    # --- lookups -----------------------------------------------------------

    def connection_type(self, name: str) -> ConnectionType:
        try:
            return self.connection_types[name]
        except KeyError:
            known = ", ".join(sorted(self.connection_types)) or "none installed"
            raise PluginError(
                f"unknown connection type {name!r}; installed types: {known}"
            ) from None

    def sink_type(self, name: str) -> SinkType:
        try:
            return self.sink_types[name]
        except KeyError:
            known = ", ".join(sorted(self.sink_types)) or "none installed"
            raise PluginError(f"unknown sink type {name!r}; installed sink types: {known}") from None

    # --- calling what a connection type registered ------------------------

    async def validate(
        self, connection_type: ConnectionType, settings: dict[str, Any], context: ValidationContext
    ) -> list[str]:
        """The type's problems with ``settings`` (it may normalise them in place)."""
        if connection_type.validate is None:
            return []
        return list(await _settled(connection_type.validate(settings, context)) or [])

    async def test(self, connection: Connection, context: ValidationContext) -> TestResult:
        connection_type = self.connection_types.get(connection.type)
        if connection_type is None or connection_type.test is None:
            return TestResult(ok=False, error=f"no installed plugin can test {connection.type!r} connections")
        result = await _settled(connection_type.test(connection, context))
        if not isinstance(result, TestResult):
            raise PluginError(f"the {connection.type} test returned {result!r}, not a TestResult")
        return result

    def accept_answer(self, connection: Connection, envelope: Envelope) -> Any:
        """What the type's ``accept`` returns, as it returns it: a
        :class:`Decision` (or anything else, meaning none), or an awaitable of
        one for an ``async def`` accept. The SMTP session answers a plain
        function's decision without a task of its own (see intake/smtp)."""
        connection_type = self.connection_types.get(connection.type)
        if connection_type is None or connection_type.accept is None:
            return None
        return connection_type.accept(connection, envelope)

    async def collect(self, connection: Connection, context: CollectContext) -> None:
        connection_type = self.connection_type(connection.type)
        if connection_type.collect is not None:
            await _settled(connection_type.collect(connection, context))

    async def serve(self, connection_type: ConnectionType, context: IntakeContext) -> None:
        if connection_type.serve is not None:
            await _settled(connection_type.serve(context))

    def warnings(self, connection: Connection) -> list[str]:
        connection_type = self.connection_types.get(connection.type)
        if connection_type is None or connection_type.warnings is None:
            return []
        return list(connection_type.warnings(connection))

    def arrival(self, connection: Connection) -> dict[str, str]:
        """The metadata every arrival for ``connection`` starts with; the one
        place provenance is stamped, from the type's registration."""
        connection_type = self.connection_types.get(connection.type)
        return {
            "connection_id": connection.id,
            "connection_type": connection.type,
            "provenance": connection_type.arrival_provenance if connection_type else connection.type,
        }


async def _settled(value: Any) -> Any:
    """A callable's answer, awaited when it was ``async def``."""
    return await value if inspect.isawaitable(value) else value


def load_plugins(settings: PluginsConfig | None = None) -> PluginHost:
    host = PluginHost(settings)
    host.load_entry_points()
    return host


def _claim(owners: dict[str, str], what: str, name: str, plugin: str) -> None:
    if name in owners:
        raise PluginError(
            f"{what} {name!r} is registered by two plugins: {owners[name]!r} and {plugin!r}; "
            f"uninstall or block one of them in [plugins] block = [...]"
        )
    owners[name] = plugin


def _check_kind(connection_type: ConnectionType, plugin: str) -> None:
    """Refuse a type that cannot do what its way of receiving needs."""
    needed = REQUIRED_BY_KIND.get(connection_type.receives)
    if needed is None:
        kinds = ", ".join(repr(k) for k in REQUIRED_BY_KIND)
        raise PluginError(
            f"plugin {plugin!r} registers connection type {connection_type.name!r} with "
            f"receives={connection_type.receives!r}; use one of {kinds}"
        )
    if getattr(connection_type, needed) is None:
        raise PluginError(
            f"plugin {plugin!r} registers connection type {connection_type.name!r} that receives "
            f"{connection_type.receives!r} but gives no {needed}=...; add it to its ConnectionType "
            "(see docs/plugins.md), or block the plugin in [plugins] block = [...]"
        )
    for field_name in CALLABLE_FIELDS:
        value = getattr(connection_type, field_name)
        if value is not None and not callable(value):
            raise PluginError(
                f"plugin {plugin!r}: connection type {connection_type.name!r} has {field_name}={value!r}, "
                "which cannot be called; give a function"
            )


def _distribution_of(entry_point: EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return ("", "")
    return (dist.metadata["Name"] or "", dist.version or "")


#: Hooks of earlier releases that became fields of ``ConnectionType``.
_MOVED_HOOKS = {
    "mailpipe_validate": "validate",
    "mailpipe_test": "test",
    "mailpipe_collect": "collect",
    "mailpipe_accept": "accept",
}


def _hook_typo(error: pluggy.PluginValidationError) -> str:
    moved = [f"{hook} → ConnectionType({field}=...)" for hook, field in _MOVED_HOOKS.items() if hook in str(error)]
    if moved:
        return (
            f"{error}; these hooks became fields of the connection type's registration: "
            f"{', '.join(moved)} (see docs/plugins.md)"
        )
    return (
        f"{error}; mailpipe has no such hook — check the spelling against docs/plugins.md"
    )


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]
