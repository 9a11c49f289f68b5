"""The JSON shapes operators see, built once for the CLI's ``--json`` and the API.

The CLI (mailpipe.cli.commands) and the HTTP API (mailpipe.http.api) both
call these, so a connection, a listing or an archived message has one shape
whichever face shows it (docs/cli.md documents them).
"""

from __future__ import annotations

from typing import Any

from mailpipe.config import Config
from mailpipe.connections.live_status import live_fields
from mailpipe.plugin_host import PluginHost
from mailpipe.types import Connection, ConnectionType


def connection_view(runtime: Any, connection: Connection) -> dict[str, Any]:
    """A connection as the CLI's --json and the API show it, with the
    warnings its type's plugin gives (settings that work but that an
    operator should know about)."""
    data = runtime.service.public(connection)
    data.update(live_fields(runtime.store, connection.id, collecting=connection.enabled))
    data["warnings"] = runtime.service.warnings(connection)
    return data


def plugins_view(host: PluginHost) -> dict[str, Any]:
    return {
        "plugins": [info.__dict__ for info in sorted(host.infos.values(), key=lambda i: i.name)],
        "broken": [b.__dict__ for b in host.broken],
        "skipped": host.skipped,
    }


def connection_type_view(connection_type: ConnectionType) -> dict[str, Any]:
    """A type with its settings schema: what an add form is built from."""
    return {
        "name": connection_type.name,
        "description": connection_type.description,
        "receives": connection_type.receives,
        "settings": [
            {
                "name": s.name, "kind": s.kind, "required": s.required, "default": s.default,
                "help": s.help, "choices": list(s.choices),
                "applies_when": dict(zip(("setting", "value"), s.applies_when)) if s.applies_when else None,
            }
            for s in connection_type.settings
        ],
    }


def archive_summary(entry: Any) -> dict[str, Any]:
    meta = entry.metadata
    journal = meta.get("journal") or {}
    arrivals = meta.get("arrivals") or []
    return {
        "id": entry.id,
        "connection_id": meta.get("connection_id"),
        "size": meta.get("size"),
        "sha256": meta.get("sha256"),
        "received_at": arrivals[0].get("received_at") if arrivals else None,
        "arrivals": arrivals,
        "journal_report": bool(journal),
        "path": str(entry.eml_path),
    }


def spool_view(runtime: Any, where: str) -> dict[str, Any]:
    rows = []
    for message in runtime.spool.pending(where) if runtime.has_spool else []:
        state = runtime.spool.state(message.id, where)
        rows.append(
            {
                "spool_id": message.id,
                "connection_id": message.metadata.get("connection_id"),
                "size": message.size,
                "received_at": message.metadata.get("received_at"),
                "attempts": state.attempts,
                "stored_in": state.stored_in,
                "reason": state.last_error,
                "quarantined_at": state.quarantined_at,
            }
        )
    return {"where": where, "messages": rows}


def sinks_view(config: Config) -> dict[str, Any]:
    return {
        "sinks": [
            {"name": t["name"], "type": t["type"], "required": bool(t.get("required", True))}
            for t in config.sinks
        ]
    }
