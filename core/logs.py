"""Structured logs: one JSON object per line on stderr.

Every record carries its ``extra`` fields (connection, spool_id, sink...),
so an operator can grep for what one connection did.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """For one-shot CLI commands: ``mailpipe: warning: text (key=value, ...)``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = ", ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        text = f"mailpipe: {record.levelname.lower()}: {record.getMessage()}"
        return f"{text} ({extras})" if extras else text


def setup_logging(level: str = "INFO", human: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if human else JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    set_level(level)


#: Libraries that log every request or SMTP line at INFO: never below WARNING.
_NOISY = ("mail.log", "botocore", "boto3", "urllib3", "aioimaplib", "s3transfer")


def set_level(level: str) -> None:
    """The level of every mailpipe log line; also what a SIGHUP reload changes."""
    logging.getLogger().setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level)


#: Seconds between two log lines about one ongoing condition.
CONDITION_LOG_INTERVAL = 60.0
#: Conditions remembered at once (e.g. one per flooding client address).
CONDITION_LIMIT = 10_000


class ConditionLog:
    """One warning when a condition starts, then at most one per interval
    saying how often it happened meanwhile: a flood or an outage that lasts
    days writes a line a minute, not one per event."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = CONDITION_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, condition: str, message: str, **extra: Any) -> None:
        now = self.clock()
        last = self._last.get(condition)
        if last is not None and now - last < self.interval:
            self._suppressed[condition] += 1
            return
        if len(self._last) >= CONDITION_LIMIT:
            self._last.clear()
            self._suppressed.clear()
        self._last[condition] = now
        repeats = self._suppressed.pop(condition, 0)
        self.logger.warning(message, extra={"condition": condition, "repeated_since_last_line": repeats, **extra})
