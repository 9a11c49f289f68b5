"""Telling the pipeline, in another process, that a message was spooled.

The pipeline runs in a process of its own (mailpipe.server.pipeline_process); the
processes that spool (the server's SMTP listener and collectors, the SMTP
workers) send the ids of the messages they committed to a Unix datagram
socket of the pipeline process, which schedules them at once. The ids
committed in one turn of the sender's event loop (a group commit's batch)
travel together, space-separated, in as few datagrams as fit. A Unix
datagram socket queues only a few datagrams (``net.unix.max_dgram_qlen``,
10 by default): when the pipeline is busy and the queue is full, the
sender keeps the ids and tries again a few milliseconds later. The
pipeline's periodic rescan of the queue stays the backstop: a lost
datagram only delays a message by up to a second, never loses it (the
message is durable before it is announced).

The socket is in Linux's abstract namespace, named after the spool
directory (so two servers on one machine do not mix), which avoids the
108-byte path limit of socket files. Any local process can send to it, so
what arrives is only a hint: ids that are not well-formed spool ids are
ignored, and the pipeline loads every message from disk. Where abstract
sockets do not exist (not Linux), only the rescan is used.
"""

from __future__ import annotations

import asyncio
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
#: Ids per datagram (25 bytes each with the separator).
IDS_PER_DATAGRAM = 160
#: Longer datagrams are cut here (the cut id then fails the check).
MAX_DATAGRAM = 25 * IDS_PER_DATAGRAM
#: When the pipeline's queue is full, try again after this many seconds.
RETRY_SECONDS = 0.005
#: Ids kept for a pipeline that does not read; beyond, the oldest are left to its rescan.
MAX_PENDING = 100_000


def socket_name(spool_root: Path) -> bytes | None:
    """The abstract socket address for a spool, or None where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    digest = hashlib.sha256(str(spool_root.resolve()).encode()).hexdigest()[:32]
    return b"\0mailpipe-spool-" + digest.encode()


class SpoolAnnouncer:
    """Sends committed spool ids to the pipeline process."""

    def __init__(self, spool_root: Path) -> None:
        self.address = socket_name(spool_root)
        self.socket: socket.socket | None = None
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        if self.address is not None:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.socket.setblocking(False)

    def announce(self, spool_id: str) -> None:
        """Queue ``spool_id``; it is sent when this turn of the event loop ends."""
        if self.socket is None:
            return
        self._pending.append(spool_id.encode())
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not in an event loop: send now
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if not self.flush():
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._scheduled_flush)

    def flush(self) -> bool:
        """Send what is queued; False if the pipeline's queue is full (try later)."""
        while self._pending and self.socket is not None:
            batch = self._pending[:IDS_PER_DATAGRAM]
            try:
                self.socket.sendto(b" ".join(batch), self.address)
            except BlockingIOError:
                return False
            except OSError:
                self._pending.clear()  # no pipeline listening: its rescan at start finds them
                return True
            del self._pending[: len(batch)]
        return True

    def close(self) -> None:
        if self.socket is not None:
            self.flush()
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
                for candidate in payload.split(b" "):
                    if _SPOOL_ID.fullmatch(candidate):
                        deliver(candidate.decode())
    finally:
        listener.close()
