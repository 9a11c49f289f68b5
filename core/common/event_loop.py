"""The event loop mailpipe's processes run on: uvloop where it is installed.

uvloop (libuv under asyncio's API) is a dependency on Linux and macOS: with
it the SMTP listener answers more messages per second on the same CPU
(docs/benchmarks.md, "SMTP: the profile and each step", has the measured
effect). ``MAILPIPE_EVENT_LOOP=asyncio`` chooses asyncio's own loop instead,
e.g. to rule uvloop out while looking for a problem; anything else there
is refused with what to write.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import anyio

from mailpipe.errors import ConfigError

CHOICES = ("uvloop", "asyncio")


def event_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what ``run`` will use."""
    chosen = os.environ.get("MAILPIPE_EVENT_LOOP", "").strip().lower()
    if chosen and chosen not in CHOICES:
        raise ConfigError(
            f"MAILPIPE_EVENT_LOOP={chosen!r} is not an event loop mailpipe knows; "
            "set it to uvloop or asyncio, or unset it"
        )
    if chosen == "asyncio" or importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def run(function: Callable[..., Any], *args: Any, backend: str = "asyncio") -> Any:
    """``anyio.run`` on the chosen loop (``backend`` other than asyncio, e.g.
    trio for the CLI's own tests, is passed through unchanged)."""
    options = {"use_uvloop": event_loop_name() == "uvloop"} if backend == "asyncio" else {}
    return anyio.run(function, *args, backend=backend, backend_options=options)
