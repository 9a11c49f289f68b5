"""What every peer process needs: a free port, and dying with the test process."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel just considered free (the usual small race is accepted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec_fn: the child gets *sig* when the test process dies.

    Why: the peer runs in its own session (so stop() can sweep its process
    group), which also means nothing else would ever stop it if pytest were
    SIGKILLed.  Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op.  The
    signal fires when the *thread* that started the peer exits, so start
    peers from the main thread (pytest fixtures do).
    """

    def set_parent_death_signal() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1

    return set_parent_death_signal
