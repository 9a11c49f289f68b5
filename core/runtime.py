"""Wiring: config → plugins, state store, secrets, connection service, spool, sinks.

The CLI and the server both start from a ``Runtime`` so that they agree on
where everything lives.

Only commands that bring state into being (``serve``, ``connections add``)
open it with ``create=True``. Every other command opens it with
``create=False``: run in the wrong directory or with the wrong ``--config``,
it must not leave a fresh ``var/`` with a database, a spool and a new secret
key behind, and it must be able to say which data_dir it looked at
(``Runtime.state`` is ``"existing"``, ``"created"`` or ``"none"``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from mailpipe.config import HOST_SINK_KEYS, Config, load_config
from mailpipe.connections.service import ConnectionService, store_status_reporter
from mailpipe.errors import ConfigError, SecretKeyError
from mailpipe.connections.live_status import LIVE
from mailpipe.common.permissions import apply_umask, group_id, secure_data_dir
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.connections.secrets import KEY_ENV, PREFIX, SecretBox, verify_shared_key
from mailpipe.spool.queue import Spool
from mailpipe.connections.store import SQLiteStore, SQLStore
from mailpipe.types import SinkContext, SinkSlot, SinkType

#: Keys of a [[sinks]] table that belong to the host, not to the sink type.

#: existing: the state database was there; created: this process made it;
#: none: there is none and nothing was created.
StateKind = Literal["existing", "created", "none"]

#: SQLite's name for a private database in memory: where there is no state, a
#: command that only reads sees an empty store instead of creating a file.
EMPTY_STORE = Path(":memory:")


@dataclass
class Runtime:
    config: Config
    host: PluginHost
    store: SQLStore
    box: SecretBox
    service: ConnectionService
    state: StateKind = "existing"
    create: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(
        cls, config_path: str | None = None, config: Config | None = None, create: bool = True
    ) -> "Runtime":
        config = config or load_config(config_path)
        host = load_plugins(config.plugins)
        build_sink_slots(config, host)  # each sink type checks its own keys before anything is created
        state: StateKind = "existing" if _state_exists(config) else ("created" if create else "none")
        if create:
            secure_data_dir(config.data_dir, group_id(config.group))
        else:
            apply_umask(group_id(config.group))
        store = open_state_store(config, state)
        try:
            box = SecretBox.for_data_dir(config.data_dir) if create or _key_exists(config) else MissingKeyBox(config)
            if not isinstance(box, MissingKeyBox):  # secrets it writes must be readable by every node
                verify_shared_key(box, store, record=create)
        except BaseException:
            store.close()
            raise
        service = ConnectionService(config, host, store, box)
        return cls(config, host, store, box, service, state, create)

    @cached_property
    def spool(self) -> Spool:
        if not self.create and not self.has_spool:
            # A command that may not create state must look first (has_spool).
            raise RuntimeError(f"no spool under {self.config.data_dir}; opened without create")
        spool = Spool(self.config.spool_dir, min_free_bytes=self.config.spool.min_free_bytes)
        spool.space.report_status = store_status_reporter(self.store)
        return spool

    @property
    def has_spool(self) -> bool:
        return self.config.spool_dir.exists()

    def context(self) -> dict[str, Any]:
        """Which config and data_dir this command used (every --json output says so)."""
        return state_context(self.config, self.state)

    def build_sinks(self) -> list[SinkSlot]:
        return build_sink_slots(self.config, self.host)

    def build_sink(self, table: dict[str, Any]) -> SinkSlot:
        """One ``[[sinks]]`` table's sink (also what a SIGHUP reload rebuilds)."""
        return build_sink_slot(self.config, self.host, table)

    def close(self) -> None:
        LIVE.detach(self.store)  # its last notes, before the store closes
        self.store.close()


def open_state_store(config: Config, state: StateKind = "existing", migrate: bool = True) -> SQLStore:
    """The store ``[state] url`` names: PostgreSQL, or the SQLite file in data_dir
    (an empty one in memory where there is no state and none may be created)."""
    if config.shared_state:
        from mailpipe.connections.store_postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(
            config.state.url, migrate=migrate, pool_size=config.state.pool_size, wait_seconds=config.state.wait_seconds
        )
    return SQLiteStore(EMPTY_STORE if state == "none" else config.state_db, migrate=migrate)


def _state_exists(config: Config) -> bool:
    """Whether this node has its state. With a shared (PostgreSQL) store the
    database is the cluster's; what a node brings into being is its own
    secret key, so a node that has none is "none" and the commands that may
    create state (``connections add``) make it there, checked against the
    key the cluster's secrets were written with."""
    if config.shared_state:
        return _key_exists(config)
    return config.state_db.exists()


def config_file(config: Config) -> str | None:
    """The absolute path of the config file, or None for the embedded default."""
    if config.source == "embedded default":
        return None
    return str(Path(config.source).resolve())


def state_context(config: Config, state: StateKind | None = None) -> dict[str, Any]:
    if state is None:
        state = "existing" if _state_exists(config) else "none"
    return {"config": config_file(config), "data_dir": str(config.data_dir.resolve()), "state": state}


def _key_exists(config: Config) -> bool:
    return bool(os.environ.get(KEY_ENV)) or (config.data_dir / "secret.key").exists()


class MissingKeyBox(SecretBox):
    """Stands for the secret key where a command may not create one.

    Plain values pass; an encrypted one, or a new secret, is refused with
    the reason: creating a key now would hide that the one the stored
    secrets were written with is gone.
    """

    def __init__(self, config: Config) -> None:
        self._where = config.data_dir / "secret.key"

    def encrypt(self, value: str) -> str:
        raise SecretKeyError(self._missing())

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        raise SecretKeyError(self._missing())

    def _missing(self) -> str:
        return (
            f"there is no secret key: {self._where} does not exist and {KEY_ENV} is not set; "
            "restore the key the secrets were written with"
        )


def build_sink_slots(config: Config, host: PluginHost) -> list[SinkSlot]:
    """Each ``[[sinks]]`` table built by its type's factory, which checks the
    type's own keys; ``mailpipe config check`` runs this too, so a sink's
    mistake is found before the server starts."""
    slots = [build_sink_slot(config, host, table) for table in config.sinks]
    if not any(slot.required for slot in slots):
        raise ConfigError(
            f"{config.source}: every sink is optional; mark at least one "
            "`required = true` or mail would leave the spool unstored"
        )
    return slots


def build_sink_slot(config: Config, host: PluginHost, table: dict[str, Any]) -> SinkSlot:
    """One ``[[sinks]]`` table's sink (also what a SIGHUP reload rebuilds)."""
    context = SinkContext(data_dir=str(config.data_dir), config_dir=str(config.config_dir), group=config.group)
    sink_type = host.sink_type(table["type"])
    settings = {k: v for k, v in table.items() if k not in HOST_SINK_KEYS}
    try:
        sink = sink_type.factory(table["name"], settings, context)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{config.source}: sink {table['name']!r}: {error}") from None
    _refuse_undeclared_keys(config, table["name"], sink_type, settings)
    return SinkSlot(table["name"], sink, bool(table.get("required", True)))


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
