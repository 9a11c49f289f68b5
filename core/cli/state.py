"""``mailpipe state migrate``: bring the state store's schema up to this release.

``serve`` migrates on start as well; the command is for deployments that
upgrade the shared PostgreSQL schema once, before rolling the nodes, and
for checking which schema version a store has. It is idempotent: a store
already at the latest version is left as it is. A store migrated by a newer
release is refused with what to do (mailpipe.connections.store.SchemaTooNew).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mailpipe.cli.output import emit
from mailpipe.config import load_config
from mailpipe.common.permissions import group_id, secure_data_dir
from mailpipe.runtime import open_state_store, state_context


def register(commands: Any, common: argparse.ArgumentParser, actions: Callable[..., Any]) -> None:
    state = actions(commands, common, "state", "the state store (connections, accounts, audit log)")
    migrate = state.add_parser(
        "migrate", parents=[common], help="apply the schema migrations the state store lacks (idempotent)"
    )
    migrate.set_defaults(handler=cmd_state_migrate)


def cmd_state_migrate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # A shared store is the cluster's: migrating it creates nothing on this node.
    existed = config.shared_state or state_context(config)["state"] == "existing"
    if not config.shared_state:
        secure_data_dir(config.data_dir, group_id(config.group))
    store = open_state_store(config, migrate=False)
    try:
        migrated = store.migrate()
    finally:
        store.close()
    args.runtime_context = state_context(config, "existing" if existed else "created")
    data = {
        "backend": "postgresql" if config.shared_state else "sqlite",
        "store": store.location,
        "schema_version_before": migrated.before,
        "schema_version": migrated.after,
        "migrations_applied": migrated.after - migrated.before,
    }

    def human(d: dict[str, Any]) -> str:
        if not d["migrations_applied"]:
            return f"{d['store']}: schema version {d['schema_version']}, up to date"
        return (f"{d['store']}: schema version {d['schema_version_before']} -> {d['schema_version']} "
                f"({d['migrations_applied']} migration(s) applied)")

    emit(args, data, human)
    return 0
