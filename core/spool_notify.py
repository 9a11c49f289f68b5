"""Telling the pipeline, in another process, that a message was spooled.

Under ``serve --workers N`` the SMTP workers spool messages that only the
server process delivers. Each worker sends the id of every message it
committed, one datagram each, to a Unix socket of the server process; the
pipeline schedules it at once. The pipeline's periodic rescan of the
queue stays the backstop: a lost datagram only delays a message by up to
a second, never loses it (the message is durable before it is announced).

The socket is in Linux's abstract namespace, named after the spool
directory (so two servers on one machine do not mix), which avoids the
108-byte path limit of socket files. Any local process can send to it, so
what arrives is only a hint: ids that are not well-formed spool ids are
ignored, and the pipeline loads every message from disk. Where abstract
sockets do not exist (not Linux), only the rescan is used.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import sys
from pathlib import Path
from typing import Callable

import anyio

log = logging.getLogger("mailpipe.spool")

_SPOOL_ID = re.compile(rb"[0-9a-f]{24}")
#: Longer datagrams are cut here, so they fail the id check.
MAX_DATAGRAM = 64


def socket_name(spool_root: Path) -> bytes | None:
    """The abstract socket address for a spool, or None where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(str(spool_root.resolve()).encode()).hexdigest()[:32]
    return b"\0mailpipe-spool-" + digest.encode()


class SpoolAnnouncer:
    """In a worker: sends committed spool ids to the server's pipeline."""

    def __init__(self, spool_root: Path) -> None:
        self.address = socket_name(spool_root)
        self.socket: socket.socket | None = None
        if self.address is not None:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.socket.setblocking(False)

    def announce(self, spool_id: str) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendto(spool_id.encode(), self.address)
        except OSError:
            pass  # server not listening or busy: its rescan finds the message

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


async def receive_announcements(spool_root: Path, deliver: Callable[[str], None]) -> None:
    """In the server: call ``deliver(spool_id)`` for every id announced, forever."""
    address = socket_name(spool_root)
    if address is None:
        await anyio.sleep_forever()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        log.warning(
            "cannot receive spool announcements from SMTP workers; the pipeline finds "
            "their messages by rescanning the queue every second",
            extra={"error": str(error)},
        )
        await anyio.sleep_forever()
    listener.setblocking(False)
    try:
        while True:
            await anyio.wait_readable(listener)
            while True:
                try:
                    payload = listener.recv(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                if _SPOOL_ID.fullmatch(payload):
                    deliver(payload.decode())
    finally:
        listener.close()
