"""Which SMTP peers are load balancers whose PROXY protocol header is trusted.

Behind a load balancer every TCP peer is the balancer; the PROXY protocol
(HAProxy's ``send-proxy`` / ``send-proxy-v2``) puts the real client's
address in a header before the SMTP dialogue. A header is only as
trustworthy as whoever sent it, so mailpipe reads one only from the
addresses in ``[smtp] proxy_protocol_from``: a connection from such an
address must start with a header (else it is dropped), and a connection
from anywhere else is plain SMTP, where a "PROXY ..." line is just an
unknown command (``500``). The header itself is parsed by aiosmtpd's
maintained parser (``aiosmtpd.proxy_protocol``, v1 and v2), fed by the SMTP
session for listed peers only (intake/smtp/proxy_header.py); this module
only decides for whom.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a listed load balancer has to send the PROXY header (HAProxy
#: sends it at once; aiosmtpd's parser documentation warns below 3).
PROXY_HEADER_TIMEOUT = 10.0


def client_address(text: str) -> Address | None:
    """An address as compared with allow-lists: an IPv4-mapped IPv6 address
    (a dual-stack listener's view of an IPv4 client) counts as its IPv4
    address, a zone index is ignored; None when ``text`` is not an address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(text: str, networks: Iterable[Network]) -> bool:
    """Is the address ``text`` in one of ``networks``?"""
    address = client_address(text)
    return address is not None and any(address.version == n.version and address in n for n in networks)


def balancer_entries(value: Any) -> Any:
    """``[smtp] proxy_protocol_from`` as written → normalised strings
    (``"10.0.0.5"``, ``"10.0.1.0/24"``); a ValueError names every bad entry."""
    if not isinstance(value, (list, tuple)):
        return value  # left to the type check: a string is not a list
    entries, problems = [], []
    for entry in value:
        if not isinstance(entry, str):
            return value  # left to the type check
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            problems.append(f"{entry!r} is not an IP address or CIDR range")
            continue
        single = network.prefixlen == network.max_prefixlen
        entries.append(str(network.network_address) if single else str(network))
    if problems:
        raise ValueError(
            "; ".join(problems) + '; list your load balancers\' addresses, e.g. ["10.0.0.5", "10.0.1.0/24"]'
        )
    return tuple(entries)


#: The widest entry of ``proxy_protocol_from`` taken without a warning: one
#: subnet of balancers (IPv4 /24, IPv6 /64). Anything wider lets every host
#: in it claim any client address.
WIDEST_QUIET_PREFIX = {4: 24, 6: 64}


def balancer_warnings(entries: Iterable[str]) -> list[str]:
    """A sentence for each ``proxy_protocol_from`` entry wider than one
    balancer subnet: every host in it may send a PROXY header naming any
    client, so an allowed_senders list stops meaning anything for them."""
    warnings = []
    for entry in entries:
        network = ipaddress.ip_network(entry, strict=False)
        if network.prefixlen < WIDEST_QUIET_PREFIX[network.version]:
            warnings.append(
                f"[smtp] proxy_protocol_from trusts {entry} ({network.num_addresses:,} addresses): any host "
                "in it can send a PROXY header claiming any client address, which gets past allowed_senders; "
                "list your load balancers' own addresses instead"
            )
    return warnings


class TrustedBalancers:
    """The parsed ``proxy_protocol_from`` list; empty: no PROXY header is ever read."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def sends_header(self, peer_ip: str) -> bool:
        """Must a connection from ``peer_ip`` start with a PROXY header?"""
        return bool(self.networks) and in_networks(peer_ip, self.networks)


def proxied_source(proxy_data: Any) -> str | None:
    """The client address in a parsed header; None for a header that names
    none (v1 ``PROXY UNKNOWN``, v2 ``LOCAL``: the balancer's own health checks)."""
    source = getattr(proxy_data, "src_addr", None)
    if source is None or isinstance(source, (str, bytes)):  # UNIX sockets: a path, not an address
        return None
    return str(client_address(str(source)) or source)
