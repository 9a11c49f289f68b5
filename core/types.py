"""Typed objects that plugins hand to the host and that the host hands back.

Registration hooks return these (as conda's plugin types do): a plugin never
registers a bare dict, so a typo is an error at load time, not at 3 a.m.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Literal, Protocol, runtime_checkable

# The sink contract's two failures and the message a sink is given,
# importable beside the Sink protocol: plugins import from here only.
from mailpipe.errors import MessageRejected, SinkUnavailable  # noqa: F401
from mailpipe.spool.queue import SpooledMessage  # noqa: F401

# What a fenced collector context raises once another node collects the connection.
from mailpipe.errors import LeaseLost  # noqa: F401

SettingKind = Literal["str", "int", "bool", "list", "secret", "address", "path"]


@dataclass(frozen=True)
class Setting:
    """One setting of a connection or sink type.

    ``kind`` decides how ``--set KEY=VALUE`` text is converted and shown:
    ``list`` is comma-separated, ``secret`` is encrypted at rest and masked
    in every output, ``int``/``bool`` are parsed.

    ``applies_when`` is ``(other setting, value)`` for a setting that only
    means something when another one has that value (IMAP's ``client_id``
    with ``auth = oauth2``): the console's form shows it only then.
    """

    name: str
    kind: SettingKind = "str"
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    applies_when: tuple[str, str] | None = None


Receives = Literal["smtp", "pull", "push"]
#: ``validate(settings, context)``: problems as sentences, ``[]`` when all is well.
Validate = Callable[[dict[str, Any], "ValidationContext"], "list[str] | Awaitable[list[str]]"]
#: ``test(connection, context)``: can the connection work now?
Test = Callable[["Connection", "ValidationContext"], "TestResult | Awaitable[TestResult]"]
#: ``collect(connection, context)``: pull mail until cancelled.
Collect = Callable[["Connection", "CollectContext"], Awaitable[None]]
#: ``accept(connection, envelope)``: the SMTP answer for one recipient.
Accept = Callable[["Connection", "Envelope"], "Decision | Awaitable[Decision]"]
#: ``serve(context)``: run a push protocol's listener for every connection of the type.
Serve = Callable[["IntakeContext"], Awaitable[None]]
#: ``warnings(connection)``: settings that work but an operator should know about.
Warnings = Callable[["Connection"], list[str]]

#: The callables a connection type may carry, by field name.
CALLABLE_FIELDS = ("validate", "test", "collect", "accept", "serve", "warnings")
#: What each way of receiving needs from its connection type, by field name.
REQUIRED_BY_KIND: dict[str, str] = {"smtp": "accept", "pull": "collect", "push": "serve"}


@dataclass(frozen=True)
class ConnectionType:
    """A kind of connection that brings mail in, with the callables the host
    calls for it (as conda's registration objects carry theirs): the host
    calls them only for connections of this type, so no plugin ever asks
    "is this call for me?".

    ``receives`` says how mail arrives, and so which callable the type must
    give (the host refuses the registration otherwise):

    - ``"smtp"``: each connection gets a unique journal address; the shared
      SMTP listener calls ``accept(connection, envelope)`` at ``RCPT TO``.
    - ``"pull"``: ``collect(connection, context)`` runs in its own task while
      the connection is enabled.
    - ``"push"``: a new push protocol (a webhook, a vendor's streaming API):
      ``serve(context)`` runs once for the whole type while the server runs
      and spools for whichever connection a delivery belongs to.

    ``validate(settings, context)`` (optional) checks settings on ``add`` and
    ``edit``; ``test(connection, context)`` (optional; without it ``connections
    test`` says the type offers none) checks that a connection can work now;
    ``warnings(connection)`` (optional) lists settings that work but that an
    operator should know about, shown with the connection by every command.
    Each callable may be ``def`` or ``async def``.

    ``provenance`` is recorded in every arrival's metadata (the type's name
    when left empty): the host stamps it, never the plugin.
    """

    name: str
    description: str
    settings: tuple[Setting, ...] = ()
    receives: Receives = "pull"
    provenance: str = ""
    validate: Validate | None = None
    test: Test | None = None
    collect: Collect | None = None
    accept: Accept | None = None
    serve: Serve | None = None
    warnings: Warnings | None = None

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    @property
    def arrival_provenance(self) -> str:
        return self.provenance or self.name


@runtime_checkable
class Sink(Protocol):
    """What a sink object must do. ``store`` is idempotent: storing the same
    message twice (a retry after a crash) leaves one copy.

    A failing ``store`` says why by what it raises:
    :class:`SinkUnavailable` ("I cannot store anything now": retried for as
    long as ``[pipeline] outage_retry_for`` allows, never quarantined before)
    or :class:`MessageRejected` ("this message is bad for me": counts toward
    ``[pipeline] max_attempts``, then quarantine). Any other exception counts
    as a message problem too, except ``ConnectionError`` and
    ``TimeoutError``, which mean unavailable.

    Optional abilities are declared protocols of their own, which the host
    recognises by ``isinstance``: :class:`BatchSink` (store many messages in
    one call) and :class:`ReadableArchive` (``mailpipe archive list / show /
    verify`` can read it).
    """

    name: str

    async def store(self, message: "SpooledMessage") -> None: ...

    async def test(self) -> "TestResult": ...

    async def aclose(self) -> None: ...


@dataclass
class SinkSlot:
    """A configured sink as the pipeline holds it: its name, the instance, and
    whether a message may leave the spool without being stored there."""

    name: str
    sink: Sink
    required: bool = True


#: What a sink reports for one message it could not store: the exception,
#: or a bare text (which counts as a message problem).
Failure = BaseException | str


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that stores many messages in one call, cheaper than one
    ``store`` each (the filesystem sink syncs the filesystem once per batch).
    The pipeline hands it up to ``[pipeline] batch_size`` messages at once.

    ``store_batch`` returns ``{spool id: failure}`` for the messages it could
    not store (an empty dict when all were stored); raising fails the whole
    batch. ``mailpipe.pipeline.sink_batch.store_each`` is the one-by-one fallback.
    """

    async def store_batch(self, messages: list["SpooledMessage"]) -> dict[str, Failure]: ...


@dataclass(frozen=True)
class ArchivedMessage:
    """One message as an archive lists it: ``connection/sha256``, its file, its metadata."""

    id: str
    eml_path: Path
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Mismatch:
    """A stored message whose bytes no longer match its recorded hash."""

    id: str
    problem: str


@runtime_checkable
class ReadableArchive(Sink, Protocol):
    """A sink whose archive mailpipe can read back (``mailpipe archive``).

    Reading never creates anything: an archive that does not exist yet is an
    empty one.
    """

    def entries(self) -> Iterator[ArchivedMessage]: ...

    def find(self, archive_id: str) -> list[ArchivedMessage]:
        """Every entry whose ``connection/sha256`` or sha256 starts with ``archive_id``
        (only the exact one when ``archive_id`` is a whole id)."""
        ...

    def count(self) -> int: ...

    def verify(self, on_checked: Callable[[], None] | None = None) -> tuple[int, list[Mismatch]]:
        """Re-hash every entry: ``(checked, mismatches)``; ``on_checked()`` after each."""
        ...


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
    """A connection type's ``accept`` answer for one SMTP recipient (Haraka style:
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
    """The SMTP envelope of one transaction, as a type's ``accept`` sees it."""

    peer_ip: str
    helo: str
    mail_from: str
    rcpt_to: str
    proxied_ip: str | None = None

    @property
    def client_ip(self) -> str:
        """The address that counts for allow-lists: the client address in
        the PROXY header when the peer is a load balancer listed in ``[smtp]
        proxy_protocol_from``, else the TCP peer."""
        return self.proxied_ip or self.peer_ip


@dataclass
class ValidationContext:
    """What a connection type's ``validate`` and ``test`` may consult besides the settings."""

    find_connection: Callable[[str], Connection | None]
    accepted_domains: tuple[str, ...] = ()
    connection_id: str | None = None


class ProgressReport(Protocol):
    """``report_progress(remaining=..., collected=...)``: ``remaining`` messages
    are still at the source, not yet collected; ``collected`` were made
    durable since the last report. Cheap (kept in memory, written about once
    a second): call it per batch, never an extra round trip to the source."""

    def __call__(self, *, remaining: int, collected: int = 0) -> None: ...


def _no_progress(*, remaining: int, collected: int = 0) -> None:
    """The default where nobody watches (a context built by hand, in a test)."""
async def _no_lease() -> None:
    """``check_lease`` where nothing is leased: always held."""


@dataclass
class CollectContext:
    """Handed to a connection type's ``collect`` (and, per connection, to
    ``serve``): where to put mail and state.

    ``spool_bytes(data, metadata)``, ``spool_chunks(chunks, metadata)`` and
    ``spool_many(items)`` return only after the messages are durable; only then may the collector flag,
    move or delete it at the source. ``report_progress`` tells the operator
    how far a collector is through its source (messages left, the rate and
    the time left are shown with the connection).
    move or delete it at the source.

    With several nodes, a pull collector runs only on the node that holds
    the connection's lease (mailpipe.connections.leases), and the context is *fenced*:
    ``set_state`` raises :class:`LeaseLost` once another node has taken the
    connection over (the write is refused, so a checkpoint never goes back),
    and ``await check_lease()`` raises it too: call it before every action
    at the source (delete, move, flag). Let ``LeaseLost`` propagate; the host
    stops the collector. ``fencing_token`` is the lease's token (None where
    there is no lease: push listeners, tests).
    """

    spool_bytes: Callable[[bytes, dict[str, Any]], Awaitable[str]]
    spool_chunks: Callable[[Any, dict[str, Any]], Awaitable[str]]
    get_state: Callable[[str], Awaitable[Any]]
    set_state: Callable[[str, Any], Awaitable[None]]
    find_connection: Callable[[str], Connection | None]
    log: Any
    report_progress: ProgressReport = _no_progress
    check_lease: Callable[[], Awaitable[None]] = _no_lease
    fencing_token: int | None = None
    #: ``spool_many([(data, metadata), ...])``: a batch already in memory,
    #: durable (one sync for all of it) when it returns; the spool ids, in
    #: order. None where the host offers only the one-by-one calls.
    spool_many: Callable[[list[tuple[bytes, dict[str, Any]]]], Awaitable[list[str]]] | None = None


@dataclass
class IntakeContext:
    """Handed to a push type's ``serve``: the type's connections as they are
    now, and a :class:`CollectContext` for the one a delivery belongs to
    (whose ``spool_bytes`` returns once the message is durable; only then may
    the protocol acknowledge it to the sender)."""

    connections: Callable[[], list[Connection]]
    collect_context: Callable[[Connection], CollectContext]
    log: Any
