"""smtp_exchange: a local Exchange journals to a unique address.

Settings: ``sender_servers`` — one or more IPv4/IPv6 addresses or CIDR
ranges. Mail is accepted only from those servers (behind a load balancer
listed in ``[smtp] proxy_protocol_from``: the client address in its PROXY
header).

A very wide range (``0.0.0.0/0``, ``::/0``, anything wider than an IPv4 /8
or an IPv6 /32) is accepted, since a lab may want it, but never silently:
``connections add``/``edit`` print a warning (a log line, which the CLI
shows on stderr), ``connections test`` lists it among the result's
warnings, and the server logs it when it loads the connection's allow-list.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from mailpipe import hookimpl
from mailpipe.plugins.smtp_common import disabled_decision
from mailpipe.common.networks import in_networks
from mailpipe.types import Connection, ConnectionType, Decision, Envelope, Setting, TestResult, ValidationContext

TYPE = "smtp_exchange"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Ranges with a prefix this short or shorter admit far more than a site's mail servers.
WIDE_PREFIX = {4: 8, 6: 32}

log = logging.getLogger("mailpipe.plugins.smtp_exchange")


@hookimpl
def mailpipe_connection_types() -> list[ConnectionType]:
    return [
        ConnectionType(
            name=TYPE,
            description="Local Exchange journaling over SMTP from listed sender servers",
            receives="smtp",
            provenance="smtp",
            settings=(
                Setting(
                    "sender_servers",
                    "list",
                    required=True,
                    help="comma-separated IPv4/IPv6 addresses or CIDR ranges of your Exchange servers",
                ),
            ),
            validate=validate,
            accept=accept,
            test=test,
        )
    ]


def parse_networks(entries: list[str]) -> tuple[list[Network], list[str]]:
    networks, problems = [], []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            problems.append(f"sender server {entry!r} is not an IP address or CIDR range")
    return networks, problems


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    entries = settings["sender_servers"]
    if isinstance(entries, str):
        entries = [e for e in entries.split(",") if e.strip()]
    networks, problems = parse_networks(entries)
    if not problems:
        settings["sender_servers"] = [str(n) for n in networks]
        for warning in wide_range_warnings(networks):
            log.warning(warning, extra={"connection": context.connection_id or "new"})
    return problems


def wide_range_warnings(networks: list[Network]) -> list[str]:
    """A sentence for each range that lets (nearly) anyone on the Internet send."""
    warnings = []
    for network in networks:
        if network.prefixlen == 0:
            warnings.append(
                f"sender_servers {network} opens this connection to the whole Internet: any server "
                "that learns the journal address can put mail into the archive; list your Exchange "
                "servers' addresses instead"
            )
        elif network.prefixlen <= WIDE_PREFIX[network.version]:
            warnings.append(
                f"sender_servers {network} admits {network.num_addresses:,} addresses, far more than a "
                "site's Exchange servers; list their addresses or a narrow range instead"
            )
    return warnings


# Parsed allow-lists, so that RCPT TO does not re-parse them for every
# message; bounded because every edit of a connection makes a new key.
_cache: dict[tuple[str, ...], list[Network]] = {}
_CACHE_LIMIT = 1024


def allowed(client_ip: str, sender_servers: list[str]) -> bool:
    """Is ``client_ip`` in one of the addresses or ranges? (IPv4-mapped IPv6
    addresses count as their IPv4 address; a zone index is ignored.)"""
    key = tuple(sender_servers)
    networks = _cache.get(key)
    if networks is None:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        networks = _cache[key] = parse_networks(list(sender_servers))[0]
        for warning in wide_range_warnings(networks):
            log.warning(warning)
    return in_networks(client_ip, networks)


def accept(connection: Connection, envelope: Envelope) -> Decision:
    if not connection.enabled:
        return disabled_decision(connection)
    if not allowed(envelope.client_ip, connection.settings.get("sender_servers", [])):
        return Decision.deny(
            550,
            f"5.7.1 sending server {envelope.client_ip} is not allowed for this connection",
        )
    return Decision.accept()


def test(connection: Connection, context: ValidationContext) -> TestResult:
    networks = parse_networks(list(connection.settings.get("sender_servers", [])))[0]
    warnings = wide_range_warnings(networks)
    if not connection.enabled:
        warnings.append("the connection is disabled: journal reports sent to it are refused until you enable it")
    return TestResult(ok=True, warnings=tuple(warnings), details={"address": connection.address})
