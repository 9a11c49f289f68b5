"""A TCP relay on loopback whose server-to-client direction is throttled.

Why: a test that watches a collector work through a mailbox needs the work
to last a few seconds on any machine. Dovecot on loopback drains thousands
of messages in about a second on a fast one; behind this relay (a mailbox
at the far end of a slow link, as in real life) the drain lasts at least
``bytes / bytes_per_second`` whatever the machine, with no timing assertion.
The bytes pass through untouched, so TLS is end to end with Dovecot.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from tests.support.peers.process import LOOPBACK

TICKS_PER_SECOND = 20


class SlowLink:
    """``with SlowLink(upstream_port, bytes_per_second) as link:`` then connect to ``link.port``."""

    def __init__(self, upstream_port: int, bytes_per_second: int, host: str = LOOPBACK) -> None:
        self.upstream = (host, upstream_port)
        self.per_tick = max(1, bytes_per_second // TICKS_PER_SECOND)
        self._listener = socket.create_server((host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="slow-link-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                return
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.per_tick), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, per_tick: int | None) -> None:
        try:
            while True:
                data = source.recv(per_tick or 65536)
                if not data:
                    break
                target.sendall(data)
                if per_tick:
                    time.sleep(1 / TICKS_PER_SECOND)
        except OSError:
            pass
        for end in (source, target):  # one side gone: the session is over
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        except OSError:
            pass
        self._listener.close()
        for end in self._sockets:
            end.close()

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
