"""SIGHUP: re-read the config file and apply what can change without a restart.

Operators and systemd (``ExecReload``) send SIGHUP after editing the config
or renewing a certificate. Every mailpipe process (the server and its
children: the pipeline process, SMTP workers) handles it the same way:

- re-read the file with :func:`mailpipe.config.load_config`; a file with
  errors is logged and the process keeps the config it runs with;
- apply what can change in place: ``[server] log_level`` (here) and what a
  running part registered with :func:`on_reload`: the SMTP listener loads
  the TLS certificate files again, so that renewed certificates reach new
  sessions without a restart; the pipeline rebuilds a sink whose optional
  settings changed (mailpipe.pipeline.sink_reload);
- log one ``configuration reloaded`` line naming what was reloaded, and a
  warning naming every changed setting that needs a restart (listen
  addresses, data_dir, sinks, pipeline settings...).

The config the process started with stays the one it compares against:
a setting that needs a restart is named on every reload until the restart.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from mailpipe.config import HOST_SINK_KEYS, Config, load_config
from mailpipe.errors import MailpipeError
from mailpipe.logs import current_level, set_level

if TYPE_CHECKING:
    from mailpipe.plugin_host import PluginHost

log = logging.getLogger("mailpipe.reload")

#: ``applier(started_with, new)`` applies part of ``new`` and returns the
#: setting names it reloaded (e.g. ``["smtp.tls_cert"]``); an exception
#: it raises is logged and the part keeps running as it was.
Applier = Callable[[Config, Config], list[str]]

_appliers: list[Applier] = []


def on_reload(applier: Applier) -> Callable[[], None]:
    """Register ``applier`` for SIGHUP in this process; returns its unregistration."""
    _appliers.append(applier)
    return lambda: _appliers.remove(applier)


def reload_config(started_with: Config, host: "PluginHost | None" = None) -> bool:
    """Handle one SIGHUP in this process; False when the file had errors.
    ``host`` (the loaded plugins) tells which sink settings are optional."""
    # Any exception, not only ConfigError: a file that became unreadable,
    # a directory or not UTF-8 must not turn a reload into a stop.
    try:
        new = load_config(None if started_with.source == "embedded default" else started_with.source)
    except Exception as error:
        log.error(
            "configuration not reloaded: the file has errors; still running with the config it had",
            extra={"config": started_with.source, "error": _describe(error)},
        )
        return False
    reloaded: list[str] = []
    for applier in list(_appliers):
        try:
            reloaded += applier(started_with, new)
        except Exception as error:
            log.error("could not reload part of the configuration; that part runs as before",
                      extra={"error": _describe(error)})
    level_changed = new.log_level != current_level()
    if level_changed:
        reloaded.append("server.log_level")
    needs_restart = [
        key for key in changed_settings(started_with, new) if not _live(key, started_with, new, host)
    ]
    log.info(
        "configuration reloaded",
        extra={"config": new.source, "reloaded": reloaded, "needs_restart": needs_restart,
               **({"log_level": new.log_level} if level_changed else {})},
    )
    if needs_restart:
        log.warning(
            "changed settings take effect only after a restart",
            extra={"settings": needs_restart},
        )
    # Last, so that the lines above are written at the level the operator
    # had when asking for the reload.
    set_level(new.log_level)
    return True


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, MailpipeError) else f"{type(error).__name__}: {error}"


def _live(key: str, old: Config, new: Config, host: "PluginHost | None") -> bool:
    """Settings applied in place by a reload (by this module or an applier)."""
    if key == "server.log_level":
        return True
    if key.startswith("sinks.") and host is not None:
        name, setting = key.removeprefix("sinks.").rsplit(".", 1)
        before = next((t for t in old.sinks if t.get("name") == name), None)
        after = next((t for t in new.sinks if t.get("name") == name), None)
        return (
            before is not None and after is not None and before["type"] == after["type"]
            and optional_sink_setting(host, before["type"], setting)
        )
    if key in ("smtp.tls_cert", "smtp.tls_key"):
        # A new certificate, yes; turning STARTTLS on or off changes what
        # EHLO offers: a restart.
        return bool(old.smtp.tls_cert) and bool(new.smtp.tls_cert)
    return False


def optional_sink_setting(host: "PluginHost", sink_type: str, key: str) -> bool:
    """A setting its sink type declares optional: rebuilt in place on reload.
    Required ones (a filesystem path, a bucket) name where the archive is:
    a restart, like the host's own keys (type, name, required)."""
    if key in HOST_SINK_KEYS:
        return False
    try:
        settings = host.sink_type(sink_type).settings
    except MailpipeError:
        return False
    return any(setting.name == key and not setting.required for setting in settings)


def changed_settings(old: Config, new: Config) -> list[str]:
    """``section.key`` names whose values differ between two configs."""
    before, after = _flatten(old), _flatten(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _flatten(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {"server.data_dir": str(config.data_dir), "server.log_level": config.log_level}
    for section in ("smtp", "pipeline", "plugins"):
        for key, value in _fields(getattr(config, section)).items():
            flat[f"{section}.{key}"] = value
    for index, sink in enumerate(config.sinks):
        table = _fields(sink)
        name = table.get("name", index + 1)
        for key, value in table.items():
            flat[f"sinks.{name}.{key}"] = value
    return flat


def _fields(section: Any) -> dict[str, Any]:
    # Dataclasses today; a pydantic model or a plain dict works the same.
    if isinstance(section, dict):
        return dict(section)
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return dataclasses.asdict(section)
    if hasattr(section, "model_dump"):
        return dict(section.model_dump())
    return dict(vars(section))
