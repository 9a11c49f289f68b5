"""The event loop choice: uvloop where installed, asyncio on request, a clear error otherwise."""

from __future__ import annotations

import asyncio

import pytest

from mailpipe.common import event_loop
from mailpipe.errors import ConfigError


def test_uvloop_by_default_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILPIPE_EVENT_LOOP", raising=False)
    assert event_loop.event_loop_name() == "uvloop"  # a dependency on Linux

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(loop_module).startswith("uvloop")
    monkeypatch.setenv("MAILPIPE_EVENT_LOOP", "asyncio")
    assert event_loop.event_loop_name() == "asyncio"
    assert event_loop.run(loop_module).startswith("asyncio")


def test_an_unknown_loop_is_refused_with_what_to_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPIPE_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigError, match="set it to uvloop or asyncio"):
        event_loop.event_loop_name()
