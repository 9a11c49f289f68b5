"""Wiring: config → plugins, state store, secrets, connection service, spool, sinks.

The CLI and the server both start from a ``Runtime`` so that they agree on
where everything lives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import Config, load_config
from mailpipe.connections import ConnectionService
from mailpipe.disk_space import store_status_reporter
from mailpipe.errors import ConfigError
from mailpipe.pipeline import SinkSlot
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.secrets import SecretBox
from mailpipe.spool import Spool
from mailpipe.store import SQLiteStore
from mailpipe.types import SinkContext

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
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = SQLiteStore(config.state_db)
        box = SecretBox.for_data_dir(config.data_dir)
        service = ConnectionService(config, host, store, box)
        spool = Spool(config.spool_dir, min_free_bytes=config.spool.min_free_bytes)
        spool.space.report_status = store_status_reporter(store)
        return cls(config, host, store, box, service, spool)

    def build_sinks(self) -> list[SinkSlot]:
        context = SinkContext(data_dir=str(self.config.data_dir), config_dir=str(self.config.config_dir))
        slots = []
        for table in self.config.sinks:
            sink_type = self.host.sink_type(table["type"])
            settings = {k: v for k, v in table.items() if k not in HOST_SINK_KEYS}
            try:
                sink = sink_type.factory(table["name"], settings, context)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"{self.config.source}: sink {table['name']!r}: {error}") from None
            slots.append(SinkSlot(table["name"], sink, bool(table.get("required", True))))
        if not any(slot.required for slot in slots):
            raise ConfigError(
                f"{self.config.source}: every sink is optional; mark at least one "
                "`required = true` or mail would leave the spool unstored"
            )
        return slots

    def close(self) -> None:
        self.store.close()
