"""The connection test's work: can mailpipe reach, trust, log in to and open the mailbox?

Each step runs against what is left of one time budget (the connection's
``timeout``, 15 s by default), and each failure says which step failed and
why, in words an operator can act on: the host name does not resolve, the
connection is refused, it timed out, the TLS handshake or certificate check
failed (or, distinctly, the port speaks plain IMAP), the login was refused,
the mailbox does not exist.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from mailpipe.plugins.imap.client import (
    ImapError,
    ImapSession,
    describe_connect_failure,
)
from mailpipe.plugins.imap.settings import TLS_VERIFY_OFF, ImapSettings
from mailpipe.types import TestResult


def asyncio_required() -> str | None:
    """aioimaplib is an asyncio library; under trio it cannot run at all."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return (
            "the IMAP connection types need the asyncio backend (aioimaplib); "
            "unset MAILPIPE_ASYNC_BACKEND or set it to asyncio"
        )
    return None


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.step = "starting"

    def left(self) -> float:
        return max(0.05, self.deadline - time.monotonic())


async def probe(settings: ImapSettings, *, extra_warnings: tuple[str, ...] = ()) -> TestResult:
    """Connect, TLS, LOGIN, SELECT within ``settings.timeout`` seconds."""
    problem = asyncio_required()
    if problem:
        return TestResult(ok=False, error=problem)
    budget = _Budget(settings.timeout)
    warnings = list(extra_warnings)
    if not settings.tls_verify:
        warnings.append(TLS_VERIFY_OFF)
    try:
        details = await asyncio.wait_for(_steps(settings, budget, warnings), budget.seconds + 0.5)
    except asyncio.TimeoutError:
        return TestResult(
            ok=False,
            error=f"timed out after {budget.seconds:.0f} s while {budget.step} "
            f"({settings.server}:{settings.port}); check the address, the port and any firewall in between",
            warnings=tuple(warnings),
        )
    except ImapError as error:
        return TestResult(ok=False, error=str(error), warnings=tuple(warnings))
    return TestResult(ok=True, warnings=tuple(warnings), details=details)


async def _steps(settings: ImapSettings, budget: _Budget, warnings: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    where = f"{settings.server}:{settings.port}"

    budget.step = f"resolving {settings.server!r}"
    try:
        await asyncio.wait_for(
            loop.getaddrinfo(settings.server, settings.port, type=socket.SOCK_STREAM), budget.left()
        )
    except OSError as error:
        raise await describe_connect_failure(error, settings) from None

    # A bare TCP connect first, so "refused" and "timed out" name the TCP
    # step rather than disappearing into the TLS handshake.
    budget.step = f"connecting to {where}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(settings.server, settings.port), budget.left())
        writer.close()
    except OSError as error:
        raise await describe_connect_failure(error, settings) from None

    budget.step = f"in the TLS handshake and IMAP greeting with {where}"
    session = await ImapSession.open(_bounded(settings, budget))
    try:
        budget.step = f"logging in as {settings.username!r}"
        await session.login()
        budget.step = f"opening mailbox {settings.mailbox!r}"
        status = await session.select()
        if settings.after_archive == "move" and settings.move_to:
            budget.step = f"looking for folder {settings.move_to!r}"
            if not await session.folder_exists(settings.move_to):
                warnings.append(
                    f"folder {settings.move_to!r} (move_to) does not exist yet; "
                    "mailpipe will create it when it first moves a message"
                )
        idle = session.has("IDLE")
        if not idle:
            warnings.append(
                f"the server does not offer IDLE: new mail is collected every {settings.poll_interval} s "
                "(poll_interval)"
            )
        budget.step = "logging out"
        await session.aclose()
    except BaseException:
        session.abort()  # no polite LOGOUT to a server that just misbehaved
        raise
    return {
        "server": where,
        "mailbox": settings.mailbox,
        "messages": status.exists,
        "uidvalidity": status.uidvalidity,
        "idle": idle,
        "auth": settings.auth,
    }


def _bounded(settings: ImapSettings, budget: _Budget) -> ImapSettings:
    """The same settings with each command's timeout cut to what is left."""
    from dataclasses import replace

    return replace(settings, timeout=max(1.0, budget.left()))
