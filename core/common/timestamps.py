"""One timestamp format for everything mailpipe shows: RFC 3339, UTC, milliseconds.

``2026-12-02T01:02:03.123Z``: sorts as text, parses with
``datetime.fromisoformat`` (Python 3.11+), ``date -d`` and every JSON tool,
and milliseconds order the arrivals of a busy server without the noise of
microseconds. Older state and archives hold other ISO forms (seconds, or
microseconds with ``+00:00``); ``rfc3339`` rewrites them on the way out.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

#: A duration as operators write one: a number and a unit, "90s", "30m", "12h", "7d", "2w".
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float | None:
    """Seconds in a duration such as "90s", "30m", "12h", "7d" or "2w"; None
    when ``text`` is not one (the caller says what else it may be)."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        return None
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def utc_now() -> str:
    return format_utc(datetime.now(timezone.utc))


def format_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339(value: str) -> str:
    """``value`` in the one format when it is an ISO timestamp with a zone;
    anything else (a naive time, free text) is returned as it is."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is None:
        return value
    return format_utc(parsed)


#: Keys whose values are timestamps besides every key ending in ``_at``.
TIMESTAMP_KEYS = frozenset({"created", "updated", "status_time"})


def with_rfc3339(data: Any, key: str = "") -> Any:
    """``data`` with every timestamp in the one format (see TIMESTAMP_KEYS)."""
    if isinstance(data, dict):
        return {k: with_rfc3339(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [with_rfc3339(item, key) for item in data]
    if isinstance(data, str) and (key in TIMESTAMP_KEYS or key.endswith("_at")):
        return rfc3339(data)
    return data
