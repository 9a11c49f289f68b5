"""The audit log: who changed what, when and from where. Append-only.

Every change made through the service layer (connections, users, tokens)
is recorded here by the service itself, so the CLI, the API and the page
cannot differ in what they record. Values are recorded as they are shown
(secrets already masked by the caller: ``ConnectionService.public``); the
log has no update or delete path at all.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from mailpipe.errors import ValidationError
from mailpipe.common.timestamps import duration_seconds, format_utc, utc_now


@dataclass(frozen=True)
class Actor:
    """Who makes a change: ``cli:<os user>``, an account name, or a token."""

    name: str
    remote: str = "local"

    @classmethod
    def cli(cls) -> "Actor":
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a container's uid)
            user = "unknown"
        return cls(f"cli:{user}", "local")


#: Changes made by mailpipe itself (e.g. a test started by the server).
SYSTEM = Actor("system", "local")


class AuditLog:
    def __init__(self, store: Any) -> None:
        self.store = store

    def record(
        self,
        actor: Actor,
        action: str,
        target: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        connection_id: str | None = None,
    ) -> None:
        self.store.execute(
            "INSERT INTO audit (recorded_at, actor, remote, action, target, connection_id, before, after)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                utc_now(), actor.name, actor.remote, action, target, connection_id,
                None if before is None else json.dumps(before, sort_keys=True, default=str),
                None if after is None else json.dumps(after, sort_keys=True, default=str),
            ),
        )

    def entries(self, connection_id: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; ``since`` is an RFC 3339 time or a duration (``30m``, ``24h``, ``7d``)."""
        sql, params = "SELECT * FROM audit WHERE 1=1", []
        if connection_id:
            sql += " AND connection_id = ?"
            params.append(connection_id)
        if since:
            sql += " AND recorded_at >= ?"
            params.append(parse_since(since))
        rows = self.store.query(sql + " ORDER BY seq", tuple(params))
        for row in rows:
            for key in ("before", "after"):
                row[key] = json.loads(row[key]) if row[key] is not None else None
        return rows


def parse_since(value: str) -> str:
    """``value`` (RFC 3339 or a duration back from now) as a stored timestamp."""
    seconds = duration_seconds(value)
    if seconds is not None:
        return format_utc(datetime.now(timezone.utc) - timedelta(seconds=seconds))
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationError([
            f"since: {value!r} is neither an RFC 3339 time with a zone (2026-12-02T01:00:00Z) "
            "nor a duration (30m, 24h, 7d)"
        ])
    return format_utc(parsed)


def audit_view(store: Any, connection_id: str | None, since: str | None) -> dict[str, Any]:
    """The audit list as the CLI's ``--json`` and the API show it."""
    return {"entries": AuditLog(store).entries(connection_id, since)}
