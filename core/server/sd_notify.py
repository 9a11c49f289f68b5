"""Telling a service manager (systemd ``Type=notify``) what the server is doing.

When ``NOTIFY_SOCKET`` is set, ``mailpipe serve`` sends ``READY=1`` once
it listens and the pipeline is up (so ``systemctl start`` returns only
then, and units ordered after it find it serving), ``RELOADING=1`` and
``READY=1`` around a SIGHUP reload, and ``STOPPING=1`` when it stops.
Without ``NOTIFY_SOCKET`` every call does nothing.

The protocol is one datagram of ``KEY=VALUE`` lines to an AF_UNIX socket
whose path is in ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace), so it is written here in a few lines instead of depending on
the ``sdnotify`` package (unmaintained since 2018) or the ``systemd``
bindings (need libsystemd and a C compiler at install time).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("mailpipe.server")


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``) to the service manager; True if
    one was told. A failure is logged, never raised: the server keeps
    running whether or not a service manager is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as error:
        log.warning(
            "cannot notify the service manager",
            extra={"notify_socket": os.environ.get("NOTIFY_SOCKET"), "error": str(error)},
        )
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    # MONOTONIC_USEC: systemd 253+ checks it to match the reload to this request.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")
