"""Progress of a collector working through a mailbox: messages left, rate, time left.

A collector reports, per batch, how many messages are still on the server
and how many it has just collected (``CollectContext.report_progress``).
The rate is what it collected over the last ``RATE_WINDOW_SECONDS``; the
time left is the messages left at that rate. Both are absent (None) when
unknown or idle, so an operator never reads a guess as a figure:

- no rate until something was collected in the window, none once the
  window holds nothing (the collector is idle, stopped or blocked);
- no time left when nothing is left or there is no rate;
- a rate whose writer stopped writing (the server was stopped or killed)
  goes absent after ``STALE_SECONDS`` instead of showing forever.

The arithmetic is here, apart from mailpipe.connections.live_status (which keeps a
``RateWindow`` per connection and writes its figures into the state store
with the rest of the live status), so that it can be tested with an
injected clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

#: The rate is what was collected over this many seconds (or since collecting began, when later).
RATE_WINDOW_SECONDS = 60.0
#: A rate measured over less than this is divided by this (no absurd figure from the first batch).
MIN_SPAN_SECONDS = 1.0
#: A rate not rewritten for this long is no longer shown (its writer, refreshing it
#: every second while collecting, has stopped).
STALE_SECONDS = 15.0
ABSENT = "—"


class RateWindow:
    """Messages collected per second over the last ``seconds``.

    A run of activity starts at a report of nothing collected made while the
    window holds no collected message (the collector's report of what it
    found, before its first batch), so the first minute of a run is not
    divided by the whole window, and a first batch is divided by the time
    it took."""

    def __init__(self, seconds: float = RATE_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._counts: deque[tuple[float, int]] = deque()  # (whole second, messages), oldest first
        self._since: float | None = None

    def note(self, collected: int) -> None:
        now = self._clock()
        self._trim(now)
        if not self._counts and (collected == 0 or self._since is None):
            self._since = now  # idle until now: a run starts (at the search, before the first batch)
        if collected > 0:
            second = float(math.floor(now))
            if self._counts and self._counts[-1][0] == second:  # one entry a second, however often noted
                self._counts[-1] = (second, self._counts[-1][1] + collected)
            else:
                self._counts.append((second, collected))

    def rate(self) -> float | None:
        now = self._clock()
        self._trim(now)
        total = sum(count for _, count in self._counts)
        if not total or self._since is None:
            return None
        span = now - max(self._since, now - self.seconds)
        return total / max(span, MIN_SPAN_SECONDS)

    def _trim(self, now: float) -> None:
        while self._counts and self._counts[0][0] <= now - self.seconds:
            self._counts.popleft()


def time_left(remaining: int | None, rate: float | None) -> int | None:
    """Whole seconds to collect ``remaining`` at ``rate`` (rounded up); None when
    nothing is left or the rate is unknown."""
    if not remaining or not rate or rate <= 0:
        return None
    return math.ceil(remaining / rate)


def progress_fields(row: dict[str, Any] | None, now: datetime | None = None) -> dict[str, Any]:
    """``remaining``, ``rate`` and ``time_left`` from a stored ``live_progress``
    row (None for a connection whose collector never reported: all absent)."""
    if row is None:
        return {"remaining": None, "rate": None, "time_left": None}
    remaining = int(row["remaining"])
    rate = row.get("rate")
    measured = datetime.fromisoformat(row["measured_at"])
    age = ((now or datetime.now(timezone.utc)) - measured).total_seconds()
    if rate is None or rate <= 0 or age > STALE_SECONDS:
        rate = None
    return {
        "remaining": remaining,
        "rate": round(float(rate), 2) if rate is not None else None,
        "time_left": time_left(remaining, rate),
    }


def progress_text(fields: dict[str, Any]) -> str:
    """"1,234 left · 350/s · 4 s left" for the CLI and the page; "" when the
    connection has no progress to show (not a collector, or never reported)."""
    remaining = fields.get("remaining")
    if remaining is None:
        return ""
    rate_text = rate_per_time(fields.get("rate"))
    seconds = fields.get("time_left")
    left_text = f"{duration_text(seconds)} left" if seconds else ABSENT
    return f"{remaining:,} left · {rate_text} · {left_text}"


def rate_per_time(rate: float | None) -> str:
    """350/s, 2.5/s, or per minute for a trickle (3/min, not 0.1/s)."""
    if not rate:
        return ABSENT
    if rate >= 10:
        return f"{rate:,.0f}/s"
    if rate >= 1:
        return f"{rate:.1f}/s"
    return f"{rate * 60:.2g}/min"


def duration_text(seconds: int) -> str:
    """4 s, 3 min 20 s, 2 h 5 min: a time left as a person reads it."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
