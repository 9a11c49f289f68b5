"""The one place where plugins are loaded and their hooks called.

Plugins come from the entry-point group ``mailpipe`` — the built-in ones
too. The operator may allow or block plugins by name in ``[plugins]``, and
``MAILPIPE_LOAD_PLUGINS=a,b`` loads only the named ones (handy for tests and
for bisecting a misbehaving plugin). A third-party plugin that fails to
import is recorded and skipped; ``mailpipe plugins`` shows why.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import anyio
import pluggy

from mailpipe import hookspecs
from mailpipe.config import PluginsConfig
from mailpipe.errors import PluginError
from mailpipe.types import ConnectionType, SinkType

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
    """Loads plugins and exposes their registrations and async-safe hook calls."""

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
            try:
                self.manager.check_pending()
            except pluggy.PluginValidationError as error:
                self.manager.unregister(name=entry_point.name)
                self.infos.pop(entry_point.name, None)
                self.broken.append(BrokenPlugin(entry_point.name, entry_point.value, _hook_typo(error)))
        self.collect_registrations()

    def register(self, module: ModuleType | object, name: str, dist: tuple[str, str] = ("", "")) -> None:
        self.manager.register(module, name=name)
        self.infos[name] = PluginInfo(name=name, distribution=dist[0], version=dist[1])

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
            for connection_type in _call_one(plugin, "mailpipe_connection_types"):
                _claim(ct_owner, "connection type", connection_type.name, plugin_name)
                self.connection_types[connection_type.name] = connection_type
                info.connection_types.append(connection_type.name)
            for sink_type in _call_one(plugin, "mailpipe_sink_types"):
                _claim(sink_owner, "sink type", sink_type.name, plugin_name)
                self.sink_types[sink_type.name] = sink_type
                info.sink_types.append(sink_type.name)

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

    # --- calling hooks -----------------------------------------------------

    async def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook, await every awaitable answer, drop ``None`` answers.

        Every implementation's coroutine is awaited (concurrently), so none
        is left un-awaited and no coroutine object is ever mistaken for an
        answer.
        """
        raw_results = getattr(self.manager.hook, hook_name)(**kwargs)
        pending = [i for i, value in enumerate(raw_results) if inspect.isawaitable(value)]
        if len(pending) <= 1:  # the common case (one plugin per type): no task group needed
            answers = list(raw_results)
            for index in pending:
                answers[index] = await answers[index]
            return [a for a in answers if a is not None]
        results: list[Any] = [None] * len(raw_results)

        async def settle(index: int, value: Any) -> None:
            results[index] = await value

        async with anyio.create_task_group() as group:
            for index, value in enumerate(raw_results):
                if inspect.isawaitable(value):
                    group.start_soon(settle, index, value)
                else:
                    results[index] = value
        return [r for r in results if r is not None]


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


def _call_one(plugin: object, hook_name: str) -> list[Any]:
    function = getattr(plugin, hook_name, None)
    if function is None:
        return []
    result = function()
    return list(result or [])


def _distribution_of(entry_point: EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return ("", "")
    return (dist.metadata["Name"] or "", dist.version or "")


def _hook_typo(error: pluggy.PluginValidationError) -> str:
    return (
        f"{error}; mailpipe has no such hook — check the spelling against docs/plugins.md"
    )


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]
