"""The operator's TOML config, with the embedded default when there is none.

``--config PATH`` wins over ``MAILPIPE_CONFIG``; with neither, mailpipe runs
on the embedded default: data under ``./var``, SMTP on 127.0.0.1:2525 and the
filesystem sink under ``./var/archive``. Relative paths in a config file are
relative to the directory the file is in; in the embedded default, to the
current directory.

Every key is checked for type and range (pydantic, strict: ``"8"`` is not a
number, ``"yes"`` is not a boolean, a string is not a list) before anything
is created on disk, and every problem is reported as one sentence naming the
file, the key, the value given and what is allowed. The host checks only
its own keys of a ``[[sinks]]`` table (``type``, ``name``, ``required``); the
rest belong to the sink type, whose factory checks them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, ValidationError, field_validator
from pydantic import model_validator

from mailpipe.errors import ConfigError
from mailpipe.common.networks import balancer_entries
from mailpipe.common.timestamps import duration_seconds

DEFAULT_CONFIG_TEXT = """\
[server]
data_dir = "var"

[smtp]
listen = "127.0.0.1:2525"
journal_domain = "journal.example.net"

[[sinks]]
type = "filesystem"
path = "var/archive"
"""

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CPU_PRIORITIES = ("auto", "idle", "normal")
#: RFC 5321 lets a text line hold 998 characters; a lower limit refuses
#: mail that every other server accepts.
MIN_LINE_LENGTH = 998
MIN_MESSAGE_SIZE = 1024
MAX_BACKOFF_SECONDS = 86_400.0
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
DOMAIN_RULE = (
    "a domain name such as journal.example.net (letters, digits and hyphens, "
    "dot-separated labels of at most 63 characters)"
)


def _domain_name(value: Any) -> Any:
    """A DNS host/domain name, lower-cased; anything else is left to the type check."""
    if not isinstance(value, str):
        return value
    domain = value.lower()
    labels = domain.split(".")
    if len(domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"must be {DOMAIN_RULE}")
    return domain


def _list_as_tuple(value: Any) -> Any:
    # TOML arrays arrive as lists; a string stays a string, so that
    # `allow = "smtp_o365"` is an error, not the tuple of its letters.
    return tuple(value) if isinstance(value, list) else value


def _duration(value: Any) -> Any:
    """Seconds from a number or a text such as "90s", "30m", "12h", "7d"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value  # left to the type check
    seconds = float(value) if not isinstance(value, str) else duration_seconds(value)
    if seconds is None:
        raise ValueError('must be a positive number of seconds or a duration such as "7d", "12h", "30m"')
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


Name = Annotated[str, Field(min_length=1)]
Duration = Annotated[float, BeforeValidator(_duration)]
DomainName = Annotated[str, BeforeValidator(_domain_name)]
NameList = Annotated[tuple[Name, ...], BeforeValidator(_list_as_tuple)]
DomainList = Annotated[tuple[DomainName, ...], BeforeValidator(_list_as_tuple)]
BalancerList = Annotated[tuple[str, ...], BeforeValidator(balancer_entries)]


class _Section(BaseModel):
    """A config table: unknown keys refused, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServerConfig(_Section):
    data_dir: str = Field("var", min_length=1, description='a directory path as a string, e.g. "var"')
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="one of " + ", ".join(f'"{level}"' for level in LOG_LEVELS)
    )
    # The group that may read the archive and data (0640/0750); none: owner only.
    group: str | None = Field(None, min_length=1, description='the name of an existing group, e.g. "archive-readers"')

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class SmtpConfig(_Section):
    listen: str | tuple[str, ...] = Field(
        "127.0.0.1:2525", description='"host:port" or a list of them, e.g. ["127.0.0.1:2525", "[::1]:2525"]'
    )
    journal_domain: DomainName = Field("journal.example.net", description=DOMAIN_RULE)
    accepted_domains: DomainList = Field((), description='a list of domain names, e.g. ["example.com"]')
    max_message_size: ByteSize = Field(
        150 * 1024 * 1024,
        ge=MIN_MESSAGE_SIZE,
        description='a size of at least 1 KiB: bytes as a number (157286400) or a string such as "150MiB" or "150MB"',
    )
    disabled_reply: Literal["tempfail", "reject"] = Field(
        "tempfail", description="'tempfail' (451, the default) or 'reject' (550)"
    )
    # Load balancers whose PROXY protocol header is trusted (mailpipe.common.networks);
    # empty: no header is ever read.
    proxy_protocol_from: BalancerList = Field(
        (), description='a list of load-balancer IP addresses or CIDR ranges, e.g. ["10.0.0.5", "10.0.1.0/24"]'
    )
    tls_cert: str | None = Field(None, description="the path of a PEM certificate chain, as a string")
    tls_key: str | None = Field(None, description="the path of a PEM private key, as a string")
    require_tls: bool = Field(False, description="true or false (without quotes)")
    max_line_length: int = Field(
        0, ge=0, description=f"0 (no limit beyond the message size) or a whole number of at least {MIN_LINE_LENGTH}"
    )
    # Concurrent connections (mailpipe.intake.smtp.limits): over a limit, 421 4.7.0.
    # 0 for the total: what the open-files limit allows; 0 per client: none.
    max_connections: int = Field(1000, ge=0, description="a whole number, 0 (as many as open files allow) or more")
    max_connections_per_client: int = Field(100, ge=0, description="a whole number, 0 (no limit) or more")
    idle_timeout: float = Field(
        300.0, gt=0, le=MAX_BACKOFF_SECONDS, description="seconds of silence (in commands or within DATA), e.g. 300"
    )
    bare_lf: Literal["accept", "reject"] = Field("accept", description="'accept' or 'reject'")
    hostname: str = Field("", description="empty (this machine's name) or " + DOMAIN_RULE)

    @model_validator(mode="before")
    @classmethod
    def _retired_proxy_protocol(cls, data: Any) -> Any:
        if isinstance(data, dict) and "proxy_protocol" in data:
            raise ValueError(
                "proxy_protocol was replaced by proxy_protocol_from, which trusts a PROXY header only from "
                'the load balancers listed: write proxy_protocol_from = ["<your balancer\'s address>"] '
                "(or remove the line when no load balancer is in front)"
            )
        return data

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        from mailpipe.message.addresses import parse_listen

        try:
            parse_listen(value)
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("[smtp] ")) from None
        return _list_as_tuple(value)

    @field_validator("hostname", mode="before")
    @classmethod
    def _hostname(cls, value: Any) -> Any:
        return _domain_name(value) if value != "" else value

    @field_validator("max_message_size", mode="after")
    @classmethod
    def _plain_int(cls, value: int) -> int:
        return int(value)

    @field_validator("max_line_length", mode="after")
    @classmethod
    def _rfc_line_length(cls, value: int) -> int:
        if 0 < value < MIN_LINE_LENGTH:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_LINE_LENGTH} (RFC 5321's line length)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "SmtpConfig":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together; set both or neither")
        if self.require_tls and not self.tls_cert:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return self


class PipelineConfig(_Section):
    max_attempts: int = Field(8, ge=1, description="a whole number of at least 1, e.g. 8")
    backoff_initial: float = Field(
        1.0, gt=0, le=MAX_BACKOFF_SECONDS, description="seconds as a number above 0 and at most 86400, e.g. 1.0"
    )
    backoff_max: float = Field(
        300.0, gt=0, le=MAX_BACKOFF_SECONDS, description="seconds as a number above 0 and at most 86400, e.g. 300"
    )
    # How long a message waits for a sink that is unavailable (an outage, not
    # a bad message) before it is quarantined: seconds, or "7d", "12h", "30m".
    outage_retry_for: Duration = Field(
        7 * 86400.0, description='a positive number of seconds or a duration such as "7d", "12h", "30m", "90s"'
    )
    # batches delivered at once (a batch's stores already overlap)
    concurrency: int = Field(1, ge=1, le=256, description="a whole number from 1 to 256")
    # messages handed to a sink's store_batch at once (500: the filesystem
    # sink syncs once per batch, and fewer syncs measured 40 % faster IMAP
    # pulls on a shared disk than 64; docs/benchmarks.md)
    batch_size: int = Field(500, ge=1, le=10_000, description="a whole number from 1 to 10000")
    # The pipeline runs in a process of its own (mailpipe.server.pipeline_process),
    # at this CPU priority: "idle" runs it on what intake leaves free; "auto"
    # is "idle" with SMTP worker processes (serve --workers N), else "normal".
    own_process: bool = Field(True, description="true or false (without quotes)")
    cpu_priority: Literal["auto", "idle", "normal"] = Field(
        "auto",
        description="'auto' (the default: 'idle' with SMTP worker processes, else 'normal'), "
        "'idle' (archiving waits for CPU that intake leaves free) or 'normal'",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> "PipelineConfig":
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max:g}) must not be below backoff_initial ({self.backoff_initial:g})"
            )
        return self


class PluginsConfig(_Section):
    allow: NameList | None = Field(None, description='a list of plugin names, e.g. ["smtp_o365", "filesystem"]')
    block: NameList = Field((), description='a list of plugin names, e.g. ["imap"]')


class SpoolConfig(_Section):
    # Free bytes kept on the spool's filesystem: below this, new mail is
    # refused (SMTP 452 4.3.1, collectors pause) so the spool can still record
    # progress. None: 1 % of the filesystem, at most 256 MiB (disk_space.py).
    min_free_bytes: ByteSize | None = Field(
        None,
        ge=0,
        description='a size, 0 or more: bytes as a number (268435456) or a string such as "256MiB"; '
        "leave it out for the default (1 % of the disk, at most 256 MiB)",
    )

    @field_validator("min_free_bytes", mode="after")
    @classmethod
    def _plain_int(cls, value: int | None) -> int | None:
        return None if value is None else int(value)


class HttpConfig(_Section):
    """The console and API (mailpipe.http); ``listen = ""`` turns them off."""

    listen: str = Field(
        "127.0.0.1:8025", description='"host:port" (e.g. "127.0.0.1:8025"), or "" to turn the console and API off'
    )
    tls_cert: str | None = Field(None, description="the path of a PEM certificate chain, as a string")
    tls_key: str | None = Field(None, description="the path of a PEM private key, as a string")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="hours a console login lasts, e.g. 12")

    @field_validator("listen", mode="after")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
            raise ValueError('must be HOST:PORT (e.g. "127.0.0.1:8025") or "" to turn it off')
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "HttpConfig":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together; set both or neither")
        return self


class StateConfig(_Section):
    """Where connections, live status, accounts and the audit log live
    (mailpipe.connections.store): "" is the embedded SQLite file in data_dir; a
    ``postgresql://`` URL is a PostgreSQL database several nodes share."""

    url: str = Field(
        "",
        description='"" (the embedded SQLite file in data_dir) or a PostgreSQL URL such as '
        '"postgresql://mailpipe@db.example.net/mailpipe"',
    )

    # The PostgreSQL connection pool of each process (mailpipe.connections.store_postgres);
    # unused with the embedded SQLite file.
    pool_size: int = Field(
        4, ge=1, le=100, description="a whole number of PostgreSQL connections per process, 1 to 100"
    )
    wait_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="seconds a request waits for a pooled PostgreSQL connection (or a restarting server), e.g. 30",
    )

    @field_validator("url", mode="after")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        if value and not value.startswith(POSTGRESQL_SCHEMES):
            raise ValueError(
                'must be "" (the embedded SQLite file in data_dir) or a URL starting with postgresql:// '
                '(e.g. "postgresql://mailpipe@db.example.net/mailpipe")'
            )
        return value

class ClusterConfig(_Section):
    """Several ``mailpipe serve`` nodes on one state store (mailpipe.connections.leases)."""

    # How long a node's hold on a connection's collector lasts without a
    # renewal (renewed every third of it): how long a dead node's mailboxes
    # wait before another node takes them over.
    lease_seconds: float = Field(
        30.0, ge=1, le=3600, description="seconds as a number from 1 to 3600, e.g. 30"
    )


class SinkTable(BaseModel):
    """The host's keys of a ``[[sinks]]`` table; the others go to the sink type."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Name = Field(description='the name of an installed sink type, e.g. "filesystem"')
    name: Name | None = Field(None, description='a name as a string, e.g. "archive"')
    required: bool = Field(True, description="true or false (without quotes)")


class ConfigFile(BaseModel):
    """The whole file: which tables exist, each checked by its section model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    server: ServerConfig = ServerConfig()
    smtp: SmtpConfig = SmtpConfig()
    pipeline: PipelineConfig = PipelineConfig()
    plugins: PluginsConfig = PluginsConfig()
    spool: SpoolConfig = SpoolConfig()
    http: HttpConfig = HttpConfig()
    state: StateConfig = StateConfig()
    cluster: ClusterConfig = ClusterConfig()
    sinks: list[SinkTable] | None = None


SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerConfig,
    "smtp": SmtpConfig,
    "pipeline": PipelineConfig,
    "plugins": PluginsConfig,
    "spool": SpoolConfig,
    "http": HttpConfig,
    "state": StateConfig,
    "cluster": ClusterConfig,
    "sinks": SinkTable,
}


@dataclass(frozen=True)
class Config:
    data_dir: Path
    config_dir: Path
    smtp: SmtpConfig
    pipeline: PipelineConfig
    plugins: PluginsConfig
    sinks: tuple[dict[str, Any], ...]
    source: str
    log_level: str = "INFO"
    group: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    spool: SpoolConfig = SpoolConfig()
    http: HttpConfig = HttpConfig()
    state: StateConfig = StateConfig()
    cluster: ClusterConfig = ClusterConfig()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "mailpipe.db"

    @property
    def shared_state(self) -> bool:
        """True when the state store is a PostgreSQL database (several nodes), not the SQLite file."""
        return bool(self.state.url)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by ``path``, ``MAILPIPE_CONFIG``, or the default.

    Reads only: nothing is created on disk, whatever the outcome."""
    chosen = path or os.environ.get("MAILPIPE_CONFIG")
    if chosen:
        file = Path(chosen)
        return parse_config(_read_text(file), base=file.resolve().parent, source=str(file))
    return parse_config(DEFAULT_CONFIG_TEXT, base=Path.cwd(), source="embedded default")


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(file)!r} does not exist; "
            "pass --config with an existing file or unset MAILPIPE_CONFIG"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(file)!r} is a directory; pass --config the path of a TOML file") from None
    except OSError as error:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(
            f"config file {str(file)!r} is not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}, "
            f"column {column}); TOML files must be UTF-8: save it in that encoding"
        ) from None


def parse_config(text: str, base: Path, source: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    try:
        checked = ConfigFile.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("\n".join(describe_problems(error, raw, source))) from None
    data_dir = _path(base, checked.server.data_dir)
    _require_directory_path(data_dir, source)
    smtp = checked.smtp
    resolved_tls = {key: str(_path(base, getattr(smtp, key))) for key in ("tls_cert", "tls_key") if getattr(smtp, key)}
    return Config(
        data_dir=data_dir,
        config_dir=base,
        smtp=smtp.model_copy(update=resolved_tls),
        pipeline=checked.pipeline,
        plugins=checked.plugins,
        sinks=_sink_tables(checked.sinks, data_dir, source),
        source=source,
        log_level=checked.server.log_level,
        group=checked.server.group,
        raw=raw,
        spool=checked.spool,
        cluster=checked.cluster,
        http=checked.http.model_copy(update={
            key: str(_path(base, getattr(checked.http, key))) for key in ("tls_cert", "tls_key")
            if getattr(checked.http, key)
        }),
        state=checked.state,
    )


def _sink_tables(tables: list[SinkTable] | None, data_dir: Path, source: str) -> tuple[dict[str, Any], ...]:
    if tables is None:
        return ({"type": "filesystem", "path": str(data_dir / "archive"), "name": "filesystem"},)
    if not tables:
        raise ConfigError(f"{source}: sinks = [] leaves mail nowhere to go; add a [[sinks]] table")
    resolved = []
    for index, table in enumerate(tables):
        sink = table.model_dump(exclude_unset=True) | dict(table.model_extra or {})
        sink.setdefault("name", _default_sink_name(table.type, index))
        resolved.append(sink)
    names = [sink["name"] for sink in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: sink names must be unique; repeated: {', '.join(duplicates)}")
    return tuple(resolved)


def _default_sink_name(sink_type: Any, index: int) -> Any:
    """The first sink is named after its type, the others get their position too."""
    if not isinstance(sink_type, str):
        return None
    return sink_type if index == 0 else f"{sink_type}-{index + 1}"


def _require_directory_path(data_dir: Path, source: str) -> None:
    """``data_dir`` must be a directory or creatable as one: neither it nor
    any parent may be a file (checked here, before anything is created)."""
    for candidate in (data_dir, *data_dir.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is" if candidate == data_dir else f"is under {str(candidate)!r}, which is"
                raise ConfigError(
                    f"{source}: [server] data_dir must be a directory, but {str(data_dir)!r} {what} a file; "
                    "point data_dir at a directory (it is created if missing)"
                )
            return


def resolve_path(config: Config, value: str) -> Path:
    return _path(config.config_dir, value)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


# --- one sentence per problem -------------------------------------------------


def describe_problems(error: ValidationError, raw: dict[str, Any], source: str) -> list[str]:
    """Each pydantic error as a sentence naming the file, the key (``[section]
    key``), the value given and what is allowed; one per key."""
    sentences: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for problem in error.errors(include_url=False):
        loc = problem["loc"]
        # A union (listen: str | list) reports each alternative; the key is
        # what the operator needs, once.
        key_path = loc[:3] if loc and loc[0] == "sinks" else loc[:2]
        if key_path in seen:
            continue
        seen.add(key_path)
        sentences.append(f"{source}: {_sentence(problem, loc, raw)}")
    return sentences


def _sentence(problem: Any, loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    kind = problem["type"]
    section = str(loc[0]) if loc else ""
    if not loc:
        return "the file must hold TOML tables such as [server], [smtp] and [[sinks]]"
    if len(loc) == 1:
        if kind == "extra_forbidden":
            return f"unknown section [{section}]{_did_you_mean(section, SECTIONS)}; known sections are " + ", ".join(
                f"[{name}]" for name in SECTIONS if name != "sinks"
            ) + " and [[sinks]]"
        if section == "sinks":
            return f"[[sinks]] must be one or more [[sinks]] tables (double brackets), not {_show(raw.get(section))}"
        if kind == "value_error":
            return f"[{section}] {_reason(problem)}"
        return f"[{section}] must be a table ([{section}] on a line of its own, then key = value lines), " \
            f"not {_show(raw.get(section))}"
    if section == "sinks":
        return _sink_sentence(problem, loc, raw)
    key = str(loc[1])
    value = raw.get(section, {}).get(key)
    return _key_sentence(problem, f"[{section}] {key}", key, value, SECTIONS[section])


def _sink_sentence(problem: Any, loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    index = int(loc[1])
    table = raw["sinks"][index]
    label = f"sink #{index + 1}"
    if isinstance(table, dict):
        name = table.get("name", _default_sink_name(table.get("type"), index))
        if isinstance(name, str) and name:
            label = f"sink {name!r}"
    if len(loc) == 2:
        return f"{label} must be a [[sinks]] table of key = value lines, not {_show(table)}"
    key = str(loc[2])
    if problem["type"] == "missing":
        return f"{label} has no 'type'; add type = \"filesystem\" (or another installed sink type)"
    return _key_sentence(problem, f"{label}: {key}", key, table.get(key), SinkTable)


def _key_sentence(problem: Any, where: str, key: str, value: Any, model: type[BaseModel]) -> str:
    if problem["type"] == "extra_forbidden":
        known = [name for name in model.model_fields]
        return f"unknown key {where}{_did_you_mean(key, known)}; known keys are {', '.join(known)}"
    if problem["type"] == "value_error":
        return f"{where} = {_show(value)}: {_reason(problem)}"
    allowed = model.model_fields[key].description
    return f"{where} must be {allowed}, not {_show(value)}"


def _reason(problem: Any) -> str:
    error = (problem.get("ctx") or {}).get("error")
    return str(error) if error is not None else problem["msg"]


def _did_you_mean(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _show(value: Any) -> str:
    """The value as the operator wrote it in TOML (near enough)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


#: The keys of a ``[[sinks]]`` table that the host reads; the others are the sink's own settings.
HOST_SINK_KEYS = frozenset({"type", "name", "required"})
