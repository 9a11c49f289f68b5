"""A condition is logged when it starts, then at most once per interval with a count."""

from __future__ import annotations

import logging

import pytest

from mailpipe.logs import ConditionLog


def test_one_line_per_interval_with_the_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    conditions = ConditionLog(logging.getLogger("mailpipe.test"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="mailpipe.test"):
        for _ in range(1000):
            conditions.warn("flood", "limit reached", peer_ip="127.0.0.2")
        conditions.warn("other", "another condition")
        now[0] = 61.0
        conditions.warn("flood", "limit reached", peer_ip="127.0.0.2")
    lines = [(r.getMessage(), getattr(r, "repeated_since_last_line")) for r in caplog.records]
    assert lines == [("limit reached", 0), ("another condition", 0), ("limit reached", 999)]


def test_accept_out_of_files_reports_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports every failed accept() (EMFILE) with a traceback; the
    listener's handler turns a burst of them into one line."""
    import asyncio
    import errno

    from mailpipe.intake.smtp.limits import quiet_accept_errors

    async def burst() -> None:
        loop = asyncio.get_running_loop()
        restore = quiet_accept_errors(loop, ConditionLog(logging.getLogger("mailpipe.test")))
        try:
            for _ in range(500):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                })
        finally:
            restore()

    with caplog.at_level(logging.WARNING):
        asyncio.run(burst())
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None
    assert "out of open files" in caplog.records[0].getMessage()
