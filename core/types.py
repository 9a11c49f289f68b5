"""Typed objects that plugins hand to the host and that the host hands back.

Registration hooks return these (as conda's plugin types do): a plugin never
registers a bare dict, so a typo is an error at load time, not at 3 a.m.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, Protocol

# The sink contract's two failures, importable beside the Sink protocol.
from mailpipe.errors import MessageRejected, SinkUnavailable  # noqa: F401

if TYPE_CHECKING:
    from mailpipe.spool import SpooledMessage

SettingKind = Literal["str", "int", "bool", "list", "secret", "address", "path"]


@dataclass(frozen=True)
class Setting:
    """One setting of a connection or sink type.

    ``kind`` decides how ``--set KEY=VALUE`` text is converted and shown:
    ``list`` is comma-separated, ``secret`` is encrypted at rest and masked
    in every output, ``int``/``bool`` are parsed.
    """

    name: str
    kind: SettingKind = "str"
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionType:
    """A kind of connection that brings mail in.

    ``receives`` says how mail arrives: ``"smtp"`` types get a unique journal
    address and are routed by the shared SMTP listener (their
    ``mailpipe_accept`` decides); ``"pull"`` types run ``mailpipe_collect``
    while enabled.
    """

    name: str
    description: str
    settings: tuple[Setting, ...] = ()
    receives: Literal["smtp", "pull"] = "pull"
    provenance: str = ""

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)


class Sink(Protocol):
    """What a sink object must do. ``store`` is idempotent: storing the same
    message twice (a retry after a crash) leaves one copy.

    A failing ``store`` says why by what it raises:
    :class:`SinkUnavailable` ("I cannot store anything now": retried for as
    long as ``[pipeline] outage_retry_for`` allows, never quarantined before)
    or :class:`MessageRejected` ("this message is bad for me": counts toward
    ``[pipeline] max_attempts``, then quarantine). Any other exception counts
    as a message problem too, except ``ConnectionError`` and
    ``TimeoutError``, which mean unavailable. An optional ``store_batch``
    returns ``{spool id: exception or error text}`` for the messages it could
    not store (a bare text counts as a message problem).
    """

    name: str

    async def store(self, message: "SpooledMessage") -> None: ...

    async def test(self) -> "TestResult": ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class SinkType:
    """A kind of sink. ``factory(name, settings, context)`` builds the sink
    object from the operator's ``[[sinks]]`` table."""

    name: str
    description: str
    factory: Callable[[str, dict[str, Any], "SinkContext"], Sink]
    settings: tuple[Setting, ...] = ()


@dataclass(frozen=True)
class SinkContext:
    data_dir: str
    config_dir: str
    group: str | None = None  # [server] group: may read what the sink writes locally


class Status(str, enum.Enum):
    UNTESTED = "untested"
    TESTING = "testing"
    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True)
class TestResult:
    """Outcome of a connection or sink test. ``warnings`` do not make it fail."""

    __test__ = False  # not a pytest test class

    ok: bool
    error: str = ""
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


class Verdict(str, enum.Enum):
    ACCEPT = "accept"
    DENY = "deny"  # permanent: 5xx
    DENYSOFT = "denysoft"  # temporary: 4xx, the sender retries


@dataclass(frozen=True)
class Decision:
    """An ``accept`` hook's answer for one SMTP recipient (Haraka style:
    DENY becomes a 5xx reply, DENYSOFT a 4xx reply)."""

    verdict: Verdict
    code: int = 250
    message: str = "OK"
    reason: str = ""  # machine-readable cause, e.g. "disabled"

    @classmethod
    def accept(cls) -> "Decision":
        return cls(Verdict.ACCEPT)

    @classmethod
    def deny(cls, code: int, message: str) -> "Decision":
        return cls(Verdict.DENY, code, message)

    @classmethod
    def denysoft(cls, code: int, message: str) -> "Decision":
        return cls(Verdict.DENYSOFT, code, message)


@dataclass(frozen=True)
class Connection:
    """A configured connection as plugins see it. ``settings`` holds
    decrypted values; never log them whole (use ``public_settings``)."""

    id: str
    type: str
    description: str
    enabled: bool
    settings: dict[str, Any]
    status: Status = Status.UNTESTED
    status_error: str = ""
    status_time: str | None = None
    address: str | None = None
    created: str = ""
    updated: str = ""


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of one transaction, as the accept hook sees it."""

    peer_ip: str
    helo: str
    mail_from: str
    rcpt_to: str
    proxied_ip: str | None = None

    @property
    def client_ip(self) -> str:
        """The address that counts for allow-lists: the PROXY protocol's
        source when the operator enabled it, else the TCP peer."""
        return self.proxied_ip or self.peer_ip


@dataclass
class ValidationContext:
    """What ``mailpipe_validate`` may consult besides the settings."""

    find_connection: Callable[[str], Connection | None]
    accepted_domains: tuple[str, ...] = ()
    connection_id: str | None = None


@dataclass
class CollectContext:
    """Handed to ``mailpipe_collect``: where to put mail and state.

    ``spool_bytes(data, metadata)`` and ``spool_file(path, metadata)`` return
    only after the message is durable; only then may the collector flag,
    move or delete it at the source.
    """

    spool_bytes: Callable[[bytes, dict[str, Any]], Awaitable[str]]
    spool_chunks: Callable[[Any, dict[str, Any]], Awaitable[str]]
    get_state: Callable[[str], Awaitable[Any]]
    set_state: Callable[[str, Any], Awaitable[None]]
    find_connection: Callable[[str], Connection | None]
    log: Any
