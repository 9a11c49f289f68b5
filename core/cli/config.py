"""``mailpipe config check``: the effective config, or every mistake in it.

An operator (or a deploy script, before a restart) checks a config without
starting a server and without touching the data directory: the file is read,
every key is checked (core/config.py), the plugins are loaded as ``serve``
would load them and each ``[[sinks]]`` table is handed to its type's factory,
which checks the sink's own keys. Nothing is created on disk. The output is
the config as the server would run it, every default filled in and every
secret masked, as TOML (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mailpipe.cli.output import emit
from mailpipe.cli.shared import run_async
from mailpipe.common.networks import balancer_warnings
from mailpipe.config import Config, load_config, resolve_path
from mailpipe.errors import MailpipeError
from mailpipe.plugin_host import PluginHost, load_plugins
from mailpipe.connections.secrets import MASK
from mailpipe.types import SinkType

#: Key names that hold a credential whatever the sink type declares.
SECRET_NAME = re.compile(r"password|passwd|secret|token|credential|private_key|access_key", re.IGNORECASE)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("config", parents=[common], help="check the config file")
    actions = group.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=[common],
        help="print the effective config (defaults filled in, secrets masked) or every error; creates nothing",
    )
    check.set_defaults(handler=cmd_config_check)


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        host = load_plugins(config.plugins)
        check_sinks(config, host)
    except MailpipeError as error:
        return _report_errors(args, str(error).splitlines())
    warnings = config_warnings(config)
    if not args.json:
        for warning in warnings:
            print(f"mailpipe: warning: {warning}", file=sys.stderr)
    emit(args, {**effective_config(config, host), "warnings": warnings}, as_toml)
    return 0


def config_warnings(config: Config) -> list[str]:
    """Settings that work but weaken what the operator probably meant
    (exit status stays 0; ``serve`` logs the same sentences)."""
    return balancer_warnings(config.smtp.proxy_protocol_from)


def check_sinks(config: Config, host: PluginHost) -> None:
    """Build every sink as ``serve`` would (the factories check their keys), then close them."""
    from mailpipe.runtime import build_sink_slots

    slots = build_sink_slots(config, host)

    async def close_all() -> None:
        for slot in slots:
            await slot.sink.aclose()

    run_async(close_all)


def _report_errors(args: argparse.Namespace, errors: list[str]) -> int:
    if args.json:
        print(json.dumps({"error": " ".join(errors), "errors": errors}, ensure_ascii=False), file=sys.stderr)
    else:
        for error in errors:
            print(f"mailpipe: error: {error}", file=sys.stderr)
    return 1


def effective_config(config: Config, host: PluginHost) -> dict[str, Any]:
    """What the server would run with: defaults filled in, paths absolute, secrets masked,
    with the ``config`` / ``data_dir`` / ``state`` keys every command's JSON has."""
    from mailpipe.runtime import state_context

    return {
        **state_context(config),
        "effective": {
            "server": {
                "data_dir": str(config.data_dir),
                "data_dir_exists": config.data_dir.is_dir(),
                "log_level": config.log_level,
            },
            "smtp": _listed(config.smtp.model_dump()),
            "pipeline": config.pipeline.model_dump(),
            "plugins": _listed(config.plugins.model_dump()),
            "spool": config.spool.model_dump(),
            "http": config.http.model_dump(),
            "state": {**config.state.model_dump(), "url": mask_url_password(config.state.url)},
            "cluster": config.cluster.model_dump(),
            "sinks": [effective_sink(config, table, host.sink_types.get(table["type"])) for table in config.sinks],
        },
    }


def effective_sink(config: Config, table: dict[str, Any], sink_type: SinkType | None) -> dict[str, Any]:
    """A ``[[sinks]]`` table with the host's and the sink type's defaults, secrets masked."""
    declared = {setting.name: setting for setting in (sink_type.settings if sink_type else ())}
    sink = {"type": table["type"], "name": table["name"], "required": table.get("required", True)}
    sink.update({key: value for key, value in table.items() if key not in sink})
    for name, setting in declared.items():
        if name not in sink and setting.default is not None:
            sink[name] = setting.default
    for key, value in sink.items():
        setting = declared.get(key)
        if (setting is not None and setting.kind == "secret") or SECRET_NAME.search(key):
            sink[key] = MASK
        elif setting is not None and setting.kind == "path" and isinstance(value, str):
            sink[key] = str(resolve_path(config, value))
        elif isinstance(value, str):
            sink[key] = mask_url_password(value)
    return sink


def mask_url_password(text: str) -> str:
    """``scheme://user:password@host`` with the password masked; other text unchanged."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.password:
        return text
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def _listed(section: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in section.items()}


def as_toml(output: dict[str, Any]) -> str:
    """The effective config as TOML the server would accept (unset keys as comments)."""
    source = output["config"] or "the embedded default"
    effective = output["effective"]
    header = [f"# effective config from {source}: defaults filled in, secrets masked"]
    if not effective["server"]["data_dir_exists"]:
        header.append("# data_dir does not exist yet; `mailpipe serve` creates it")
    blocks = ["\n".join(header)]
    for section in ("server", "smtp", "pipeline", "plugins", "spool", "http", "state", "cluster"):
        values = {k: v for k, v in effective[section].items() if k != "data_dir_exists"}
        blocks.append("\n".join([f"[{section}]"] + [_toml_line(k, v) for k, v in values.items()]))
    for sink in effective["sinks"]:
        blocks.append("\n".join(["[[sinks]]"] + [_toml_line(k, v) for k, v in sink.items()]))
    return "\n\n".join(blocks)


def _toml_line(key: str, value: Any) -> str:
    if value is None:
        return f"# {key} is not set"
    # JSON's strings, numbers, booleans and arrays of them are valid TOML.
    return f"{key} = {json.dumps(value, ensure_ascii=False)}"
