"""Turning ``--set KEY=VALUE`` text into typed settings, and back for display."""

from __future__ import annotations

from typing import Any

from mailpipe.connections.secrets import MASK
from mailpipe.types import ConnectionType, Setting

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def parse_assignments(assignments: list[str], option: str = "--set") -> tuple[dict[str, str], list[str]]:
    """Split ``KEY=VALUE`` strings; returns values and problems (naming ``option``)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            problems.append(f"{option} {assignment!r} is not KEY=VALUE")
            continue
        values[key.strip()] = value.strip()
    return values, problems


def convert(connection_type: ConnectionType, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Convert raw values to each setting's kind; report unknown keys and bad values."""
    problems: list[str] = []
    known = {s.name: s for s in connection_type.settings}
    converted: dict[str, Any] = {}
    for key, value in raw.items():
        setting = known.get(key)
        if setting is None:
            names = ", ".join(sorted(known)) or "none"
            problems.append(f"{connection_type.name} has no setting {key!r}; its settings are: {names}")
            continue
        try:
            converted[key] = convert_value(setting, value)
        except ValueError as error:
            problems.append(str(error))
    return converted, problems


def convert_value(setting: Setting, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if setting.kind == "int":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{setting.name} must be a whole number, not {value!r}") from None
    if setting.kind == "bool":
        lowered = value.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        raise ValueError(f"{setting.name} must be true or false, not {value!r}")
    if setting.kind == "list":
        return [item.strip() for item in value.split(",") if item.strip()]
    if setting.choices and value not in setting.choices:
        raise ValueError(f"{setting.name} must be one of {', '.join(setting.choices)}, not {value!r}")
    return value


def complete(connection_type: ConnectionType, settings: dict[str, Any]) -> list[str]:
    """Fill defaults in place; report missing required settings."""
    problems = []
    for setting in connection_type.settings:
        if setting.name not in settings or settings[setting.name] in (None, "", []):
            if setting.required:
                hint = f" ({setting.help})" if setting.help else ""
                problems.append(
                    f"{connection_type.name} needs setting {setting.name!r}{hint}; "
                    f"add --set {setting.name}=VALUE"
                )
            elif setting.default is not None:
                settings[setting.name] = setting.default
    return problems


def masked(connection_type: ConnectionType | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings safe to print or log: secrets replaced by a mask."""
    secret_names = {
        s.name for s in (connection_type.settings if connection_type else ()) if s.kind == "secret"
    }
    return {
        key: (MASK if key in secret_names and value not in (None, "") else value)
        for key, value in settings.items()
    }
