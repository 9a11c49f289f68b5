"""Reading a load balancer's PROXY protocol header (v1 or v2) off a session's buffer.

The header is parsed by aiosmtpd's maintained parser
(``aiosmtpd.proxy_protocol.get_proxy``), which reads through an object
with ``read``/``readexactly``/``readuntil``. :class:`BufferReader` is that
object over the session's own buffer (connection.py), so the parser takes
exactly the header's bytes and whatever the balancer sent behind it stays
in the buffer for the SMTP dialogue.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiosmtpd.proxy_protocol import get_proxy

#: The longest header the parser is fed before it is refused: v1 allows 107
#: bytes; v2 carries 16 bytes plus its own 16-bit length.
HEADER_LIMIT = 16 + 65535


class HeaderTooLong(ValueError):
    pass


class BufferReader:
    """What aiosmtpd's parser reads from: the session's unread bytes, waiting
    for more (``more``) whenever they are not enough."""

    def __init__(self, buffer: bytearray, more: Callable[[], Awaitable[None]]) -> None:
        self._buffer = buffer
        self._more = more
        self._taken = 0

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._wait(n)
        return self._take(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while (end := self._buffer.find(separator)) < 0:
            await self._wait(len(self._buffer) + 1)
        return self._take(end + len(separator))

    async def read(self, n: int = -1) -> bytes:
        while not self._buffer:
            await self._wait(1)
        return self._take(len(self._buffer) if n < 0 else min(n, len(self._buffer)))

    async def _wait(self, wanted: int) -> None:
        if self._taken + wanted > HEADER_LIMIT:
            raise HeaderTooLong("more bytes than a PROXY header can have, and no end")
        await self._more()

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._taken += n
        return data


async def read_proxy_header(buffer: bytearray, more: Callable[[], Awaitable[None]]) -> Any:
    """aiosmtpd's ``ProxyData`` for the header at the start of ``buffer``:
    true when valid; otherwise its ``error`` says why."""
    return await get_proxy(BufferReader(buffer, more))
