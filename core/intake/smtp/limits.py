"""Connection limits for the SMTP listener, and a quiet answer to running out of files.

A flood of idle connections (one misbehaving sender, or an attacker) must
not lock legitimate journaling servers out, exhaust the process's open
files, or fill the disk with log lines. Three defences:

- ``[smtp] max_connections`` (total) and ``max_connections_per_client``
  (per client IP): a connection over a limit is answered ``421 4.7.0`` and
  closed at once, before a session starts; the total is also held below
  the open-files limit, so the listener always has descriptors left;
- the open-files soft limit is raised to the hard limit at start;
- a condition (a limit reached, accept() out of descriptors) is logged once
  when it starts and then at most once a minute with a count, never a
  traceback per connection.

Counting is per process: with ``serve --workers N`` each worker enforces
the limits on the connections the kernel gives it. Behind a load balancer
(``[smtp] proxy_protocol_from``) the per-client count is by the client
address in the PROXY header, not by the balancer's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any, Callable

from mailpipe.logs import ConditionLog

log = logging.getLogger("mailpipe.smtp")

#: Descriptors kept for the spool, the state database, logs and the pipeline
#: when the total connection limit is derived from the open-files limit.
FD_RESERVE = 128


class ConnectionLimits:
    """Counts open SMTP connections, in total and per client IP; 0 means no limit."""

    def __init__(self, total: int = 0, per_client: int = 0, conditions: ConditionLog | None = None) -> None:
        self.total = total
        self.per_client = per_client
        self.conditions = conditions or ConditionLog(log)
        self.open = 0
        self.by_client: Counter[str] = Counter()

    def admit(self, client_ip: str | None) -> str | None:
        """Count a new connection; the refusal text when it is over a limit.

        ``client_ip`` None: a load balancer's connection whose client is known
        only once its PROXY header is read; only the total applies until
        :meth:`identify` names the client."""
        if self.total and self.open >= self.total:
            self.conditions.warn(
                "smtp_total_connections",
                "SMTP connection limit reached: new connections are answered 421 until some close; "
                "raise [smtp] max_connections (and the open-files limit) if this is legitimate traffic",
                limit=self.total, peer_ip=client_ip,
            )
            return f"too many connections ({self.total}); try again later"
        if client_ip is not None:
            refusal = self._client_refusal(client_ip)
            if refusal is not None:
                return refusal
            self.by_client[client_ip] += 1
        self.open += 1
        return None

    def identify(self, client_ip: str) -> str | None:
        """A connection admitted without its client now names it: count it
        under that client; the refusal text when the client is over its limit
        (the connection then stays counted in the total until released)."""
        refusal = self._client_refusal(client_ip)
        if refusal is None:
            self.by_client[client_ip] += 1
        return refusal

    def _client_refusal(self, client_ip: str) -> str | None:
        if self.per_client and self.by_client[client_ip] >= self.per_client:
            self.conditions.warn(
                f"smtp_client_connections:{client_ip}",
                "SMTP per-client connection limit reached: this client's new connections are answered 421; "
                "raise [smtp] max_connections_per_client if it is a legitimate sender",
                limit=self.per_client, peer_ip=client_ip,
            )
            return f"too many connections from {client_ip} ({self.per_client}); try again later"
        return None

    def release(self, client_ip: str | None) -> None:
        """A connection closed; ``client_ip`` as counted (None if it never was)."""
        self.open -= 1
        if client_ip is None:
            return
        self.by_client[client_ip] -= 1
        if self.by_client[client_ip] <= 0:
            del self.by_client[client_ip]


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An infinite hard limit is not a figure the kernel accepts for files: keep the soft one.
    if soft != resource.RLIM_INFINITY and hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-files limit", extra={"soft": soft, "hard": hard, "error": str(error)})
    return int(soft)


def total_limit(configured: int, open_files: int) -> int:
    """The total connection limit in force: the configured one, held below the
    open-files limit so that accept() never runs out of descriptors."""
    ceiling = max(1, open_files - FD_RESERVE)
    if configured <= 0 or configured > ceiling:
        if configured > ceiling:
            log.warning(
                "[smtp] max_connections is above what the open-files limit allows; using the lower figure",
                extra={"max_connections": configured, "open_files_limit": open_files, "in_force": ceiling},
            )
        return ceiling
    return configured


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, conditions: ConditionLog) -> Callable[[], None]:
    """Route asyncio's "socket.accept() out of system resource" reports (one
    per failed accept, each with a traceback) to one rate-limited line;
    returns the function that restores the previous handler."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            error = context.get("exception")
            conditions.warn(
                "smtp_accept_out_of_resource",
                "cannot accept SMTP connections: the process is out of open files (or memory); "
                "waiting connections are accepted when some close. Lower [smtp] max_connections "
                "or raise the open-files limit (LimitNOFILE=)",
                error=str(error),
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)
