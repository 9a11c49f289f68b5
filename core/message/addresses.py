"""``[smtp] listen``: one ``"host:port"`` string or a list of them.

Accepted forms: ``"127.0.0.1:2525"``, ``"[::1]:2525"`` (IPv6 in brackets),
``"localhost:2525"`` (every address the name resolves to), ``"*:25"`` (all
interfaces, IPv4 and IPv6). A list listens on each, e.g.
``listen = ["127.0.0.1:2525", "[::1]:2525"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailpipe.errors import ConfigError


@dataclass(frozen=True)
class ListenAddress:
    host: str | None  # None: every interface
    port: int

    def __str__(self) -> str:
        if self.host is None:
            return f"*:{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: Any) -> list[ListenAddress]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(
            '[smtp] listen must be "host:port" or a list of them, e.g. ["127.0.0.1:2525", "[::1]:2525"]'
        )
    addresses = [parse_one(item) for item in items]
    unique: list[ListenAddress] = []
    for address in addresses:
        if address not in unique:
            unique.append(address)
    return unique


def parse_one(text: Any) -> ListenAddress:
    if not isinstance(text, str):
        raise ConfigError(f'[smtp] listen entry {text!r} is not a string; write "host:port"')
    text = text.strip()
    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise ConfigError(f'[smtp] listen entry {text!r} needs a host and a port, e.g. "127.0.0.1:2525"')
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"[smtp] listen entry {text!r}: unbalanced brackets; write [::1]:2525")
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(
            f"[smtp] listen entry {text!r}: put an IPv6 address in brackets, e.g. \"[{host}]:{port_text}\""
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"[smtp] listen entry {text!r}: port must be a number from 1 to 65535")
    return ListenAddress(None if host in ("*", "") else host, port)
