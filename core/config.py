"""The operator's TOML config, with the embedded default when there is none.

``--config PATH`` wins over ``MAILPIPE_CONFIG``; with neither, mailpipe runs
on the embedded default: data under ``./var``, SMTP on 127.0.0.1:2525 and the
filesystem sink under ``./var/archive``. Relative paths in a config file are
relative to the directory the file is in; in the embedded default, to the
current directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailpipe.errors import ConfigError

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


@dataclass(frozen=True)
class SmtpConfig:
    listen: str = "127.0.0.1:2525"
    journal_domain: str = "journal.example.net"
    accepted_domains: tuple[str, ...] = ()
    max_message_size: int = 150 * 1024 * 1024
    disabled_reply: str = "tempfail"  # or "reject"
    proxy_protocol: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False
    max_line_length: int = 0  # 0: no limit beyond the message size
    bare_lf: str = "accept"  # or "reject"
    hostname: str = ""


@dataclass(frozen=True)
class PipelineConfig:
    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    concurrency: int = 1  # batches delivered at once (a batch's stores already overlap)
    batch_size: int = 64  # messages handed to a sink's store_batch at once
    # The pipeline runs in a process of its own (mailpipe.pipeline_process),
    # at this CPU priority: "idle" runs it on what intake leaves free; "auto"
    # is "idle" with SMTP worker processes (serve --workers N), else "normal".
    own_process: bool = True
    cpu_priority: str = "auto"


CPU_PRIORITIES = ("auto", "idle", "normal")


@dataclass(frozen=True)
class HttpConfig:
    """The console and API (mailpipe.http); ``listen = ""`` turns them off."""

    listen: str = "127.0.0.1:8025"
    tls_cert: str | None = None
    tls_key: str | None = None
    session_hours: float = 12.0


@dataclass(frozen=True)
class PluginsConfig:
    allow: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()


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
    raw: dict[str, Any] = field(default_factory=dict)
    http: HttpConfig = field(default_factory=HttpConfig)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "mailpipe.db"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by ``path``, ``MAILPIPE_CONFIG``, or the default."""
    chosen = path or os.environ.get("MAILPIPE_CONFIG")
    if chosen:
        file = Path(chosen)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"config file {str(file)!r} does not exist; "
                "pass --config with an existing file or unset MAILPIPE_CONFIG"
            ) from None
        return parse_config(text, base=file.resolve().parent, source=str(file))
    return parse_config(DEFAULT_CONFIG_TEXT, base=Path.cwd(), source="embedded default")


def parse_config(text: str, base: Path, source: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    known = {"server", "smtp", "pipeline", "plugins", "sinks", "http"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {', '.join(unknown)}; "
            f"known sections are {', '.join(sorted(known))}"
        )
    server = _table(raw, "server", source)
    data_dir = _path(base, server.get("data_dir", "var"))
    sinks = raw.get("sinks", [{"type": "filesystem", "path": str(data_dir / "archive")}])
    if not isinstance(sinks, list) or not all(isinstance(s, dict) for s in sinks):
        raise ConfigError(f"{source}: [[sinks]] must be a list of tables")
    resolved_sinks = []
    for index, sink in enumerate(sinks):
        if "type" not in sink:
            raise ConfigError(f"{source}: sink #{index + 1} has no 'type'")
        sink = dict(sink)
        sink.setdefault("name", sink["type"] if index == 0 else f"{sink['type']}-{index + 1}")
        if not isinstance(sink.get("required", True), bool):
            raise ConfigError(
                f"{source}: sink {sink['name']!r}: required must be true or false (without quotes)"
            )
        resolved_sinks.append(sink)
    names = [s["name"] for s in resolved_sinks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: sink names must be unique; repeated: {', '.join(duplicates)}")
    return Config(
        data_dir=data_dir,
        config_dir=base,
        smtp=_smtp(_table(raw, "smtp", source), base, source),
        pipeline=_pipeline(_table(raw, "pipeline", source), source),
        plugins=_plugins(_table(raw, "plugins", source)),
        sinks=tuple(resolved_sinks),
        source=source,
        log_level=str(server.get("log_level", "INFO")).upper(),
        raw=raw,
        http=_http(_table(raw, "http", source), base, source),
    )


def resolve_path(config: Config, value: str) -> Path:
    return _path(config.config_dir, value)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _table(raw: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return value


def _smtp(table: dict[str, Any], base: Path, source: str) -> SmtpConfig:
    table = dict(table)
    if "accepted_domains" in table:
        table["accepted_domains"] = tuple(d.lower() for d in table["accepted_domains"])
    for key in ("tls_cert", "tls_key"):
        if table.get(key):
            table[key] = str(_path(base, table[key]))
    config = _dataclass_from(SmtpConfig, table, source, "smtp")
    if config.disabled_reply not in ("tempfail", "reject"):
        raise ConfigError(
            f"{source}: [smtp] disabled_reply must be 'tempfail' (451, the default) or 'reject' (550)"
        )
    if config.bare_lf not in ("accept", "reject"):
        raise ConfigError(f"{source}: [smtp] bare_lf must be 'accept' or 'reject'")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError(f"{source}: [smtp] tls_cert and tls_key go together; set both or neither")
    if config.require_tls and not config.tls_cert:
        raise ConfigError(f"{source}: [smtp] require_tls needs tls_cert and tls_key")
    return config


def _http(table: dict[str, Any], base: Path, source: str) -> HttpConfig:
    table = dict(table)
    for key in ("tls_cert", "tls_key"):
        if table.get(key):
            table[key] = str(_path(base, table[key]))
    config = _dataclass_from(HttpConfig, table, source, "http")
    if config.listen and (":" not in config.listen or not config.listen.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(f"{source}: [http] listen must be HOST:PORT (e.g. \"127.0.0.1:8025\") or \"\" to turn it off")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError(f"{source}: [http] tls_cert and tls_key go together; set both or neither")
    return config


def _pipeline(table: dict[str, Any], source: str) -> PipelineConfig:
    config = _dataclass_from(PipelineConfig, table, source, "pipeline")
    if config.cpu_priority not in CPU_PRIORITIES:
        raise ConfigError(
            f"{source}: [pipeline] cpu_priority must be 'auto' (the default: 'idle' with SMTP worker "
            "processes, else 'normal'), 'idle' (archiving waits for CPU that intake leaves free) or 'normal'"
        )
    if not isinstance(config.own_process, bool):
        raise ConfigError(f"{source}: [pipeline] own_process must be true or false (without quotes)")
    return config


def _plugins(table: dict[str, Any]) -> PluginsConfig:
    allow = table.get("allow")
    return PluginsConfig(
        allow=tuple(allow) if allow is not None else None,
        block=tuple(table.get("block", ())),
    )


def _dataclass_from(cls: type, table: dict[str, Any], source: str, section: str) -> Any:
    fields = cls.__dataclass_fields__
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) in [{section}]: {', '.join(unknown)}; "
            f"known keys are {', '.join(sorted(fields))}"
        )
    return cls(**table)
