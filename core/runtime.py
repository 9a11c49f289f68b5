"""Wiring: config → plugins, state store, secrets, connection service, spool, sinks.

The CLI and the server both start from a ``Runtime`` so that they agree on
where everything lives.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Config, load_config
from mailpipe.connections import ConnectionService
from mailpipe.errors import ConfigError
from mailpipe.pipeline import SinkSlot
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.secrets import SecretBox
from mailpipe.spool import Spool
from mailpipe.store import SQLiteStore
from mailpipe.types import SinkContext, SinkType

#: Keys of a [[sinks]] table that belong to the host, not to the sink type.
HOST_SINK_KEYS = {"type", "name", "required"}


@dataclass
class Runtime:
    config: Config
    host: PluginHost
    store: SQLiteStore
    box: SecretBox
    service: ConnectionService
    spool: Spool
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, config_path: str | None = None, config: Config | None = None) -> "Runtime":
        config = config or load_config(config_path)
        host = load_plugins(config.plugins)
        build_sink_slots(config, host)  # each sink type checks its own keys before anything is created
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = SQLiteStore(config.state_db)
        box = SecretBox.for_data_dir(config.data_dir)
        service = ConnectionService(config, host, store, box)
        spool = Spool(config.spool_dir)
        return cls(config, host, store, box, service, spool)

    def build_sinks(self) -> list[SinkSlot]:
        return build_sink_slots(self.config, self.host)

    def close(self) -> None:
        self.store.close()


def build_sink_slots(config: Config, host: PluginHost) -> list[SinkSlot]:
    """Each ``[[sinks]]`` table built by its type's factory, which checks the
    type's own keys; ``mailpipe config check`` runs this too, so a sink's
    mistake is found before the server starts."""
    context = SinkContext(data_dir=str(config.data_dir), config_dir=str(config.config_dir))
    slots = []
    for table in config.sinks:
        sink_type = host.sink_type(table["type"])
        settings = {k: v for k, v in table.items() if k not in HOST_SINK_KEYS}
        try:
            sink = sink_type.factory(table["name"], settings, context)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{config.source}: sink {table['name']!r}: {error}") from None
        _refuse_undeclared_keys(config, table["name"], sink_type, settings)
        slots.append(SinkSlot(table["name"], sink, bool(table.get("required", True))))
    if not any(slot.required for slot in slots):
        raise ConfigError(
            f"{config.source}: every sink is optional; mark at least one "
            "`required = true` or mail would leave the spool unstored"
        )
    return slots


def _refuse_undeclared_keys(config: Config, name: str, sink_type: SinkType, settings: dict[str, Any]) -> None:
    """A key the sink type does not declare is a typo the factory may not
    catch (``fsynk = false`` would silently keep the default)."""
    declared = [setting.name for setting in sink_type.settings]
    unknown = sorted(set(settings) - set(declared))
    if not declared or not unknown:
        return
    hints = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, declared, n=1)) else key
             for key in unknown]
    raise ConfigError(
        f"{config.source}: sink {name!r}: unknown key(s) {', '.join(hints)}; "
        f"the {sink_type.name} sink's keys are {', '.join(sorted(HOST_SINK_KEYS | set(declared)))}"
    )
