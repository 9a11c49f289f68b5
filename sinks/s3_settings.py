"""Settings of the ``s3`` sink: parsed and checked once, when the sink is built.

A mistake in the ``[[sinks]]`` table must stop ``mailpipe serve`` at start
with a sentence that names the key, not surface as a failed upload hours
later. Credentials are refused outright: they belong to boto3's standard
chain (environment, shared profile, instance or task role), never to a
config file that is copied, committed and pasted into tickets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mailpipe.types import Setting

MIB = 1024 * 1024
#: Amazon S3 refuses multipart parts below 5 MiB (except the last one).
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * 1024 * MIB

CHECKSUM_MODES = ("when_supported", "when_required")
SSE_MODES = ("AES256", "aws:kms")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")

#: Keys that would put a credential into the config file.
CREDENTIAL_KEYS = frozenset(
    {
        "access_key",
        "access_key_id",
        "aws_access_key_id",
        "secret_key",
        "secret_access_key",
        "aws_secret_access_key",
        "session_token",
        "aws_session_token",
        "security_token",
        "password",
        "credentials",
    }
)

SETTINGS: tuple[Setting, ...] = (
    Setting("bucket", "str", required=True, help="bucket name (must exist)"),
    Setting("prefix", "str", default="", help="key prefix, e.g. 'mail/'"),
    Setting("region", "str", help="region, e.g. eu-west-1 (default: boto3's configured region)"),
    Setting("endpoint_url", "str", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000"),
    Setting("profile", "str", help="named profile from ~/.aws/config (default: boto3's chain)"),
    Setting(
        "checksum_mode",
        "str",
        default="when_supported",
        choices=CHECKSUM_MODES,
        help="boto3 default checksums; 'when_required' for stores that reject them",
    ),
    Setting("sse", "str", choices=SSE_MODES, help="server-side encryption"),
    Setting("kms_key_id", "str", help="KMS key id or ARN (with sse = 'aws:kms')"),
    Setting("object_lock_mode", "str", choices=LOCK_MODES, help="Object Lock retention mode"),
    Setting("object_lock_days", "int", help="retain each object this many days"),
    Setting("legal_hold", "bool", default=False, help="place a legal hold on each object"),
    Setting("storage_class", "str", help="e.g. STANDARD_IA, GLACIER_IR"),
    Setting("multipart_threshold", "int", default=8 * MIB, help="bytes; larger messages go multipart"),
    Setting("multipart_part_size", "int", default=8 * MIB, help="bytes per part (at least 5 MiB)"),
    Setting("max_concurrency", "int", default=16, help="S3 requests in flight at once"),
    Setting("conditional_writes", "bool", default=True, help="use If-None-Match/If-Match (false for old stores)"),
    Setting("connect_timeout", "int", default=10, help="seconds"),
    Setting("read_timeout", "int", default=60, help="seconds"),
    Setting(
        "max_attempts",
        "int",
        default=4,
        help="attempts per request, the first included (botocore retries throttling, 5xx, connection errors)",
    ),
)
KNOWN_KEYS = frozenset(s.name for s in SETTINGS)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    checksum_mode: str = "when_supported"
    sse: str | None = None
    kms_key_id: str | None = None
    object_lock_mode: str | None = None
    object_lock_days: int | None = None
    legal_hold: bool = False
    storage_class: str | None = None
    multipart_threshold: int = 8 * MIB
    multipart_part_size: int = 8 * MIB
    max_concurrency: int = 16
    conditional_writes: bool = True
    connect_timeout: int = 10
    read_timeout: int = 60
    max_attempts: int = 4

    @property
    def wants_object_lock(self) -> bool:
        return bool(self.object_lock_mode or self.legal_hold)


def parse_settings(name: str, raw: dict[str, Any]) -> S3Settings:
    """Check the operator's table; raise ``ValueError`` listing every problem."""
    problems: list[str] = []
    found_credentials = sorted(k for k in raw if k.lower() in CREDENTIAL_KEYS)
    if found_credentials:
        problems.append(
            f"credentials do not belong in the config file (found {', '.join(found_credentials)}); "
            "remove them and give the server credentials through boto3's standard chain: "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment, a profile "
            "(AWS_PROFILE or `profile = \"...\"`), or an instance/task role"
        )
    unknown = sorted(k for k in raw if k not in KNOWN_KEYS and k.lower() not in CREDENTIAL_KEYS)
    if unknown:
        problems.append(
            f"unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(KNOWN_KEYS))}"
        )
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name not in raw:
            continue
        value, problem = _convert(setting, raw[setting.name])
        if problem:
            problems.append(problem)
        else:
            values[setting.name] = value
    if not values.get("bucket"):
        problems.append('the s3 sink needs bucket = "..."')
    problems += _cross_checks(values)
    if problems:
        raise ValueError("; ".join(problems))
    if "prefix" in values:
        values["prefix"] = normalise_prefix(values["prefix"])
    return S3Settings(**values)


def normalise_prefix(prefix: str) -> str:
    """'mail', '/mail/' and 'mail/' all mean keys under 'mail/'."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


def _convert(setting: Setting, value: Any) -> tuple[Any, str]:
    if setting.kind == "bool":
        if isinstance(value, bool):
            return value, ""
        return None, f"{setting.name} must be true or false, not {value!r}"
    if setting.kind == "int":
        parsed = parse_size(value) if setting.name.startswith("multipart_") else value
        if isinstance(parsed, bool) or not isinstance(parsed, int) or parsed <= 0:
            return None, f"{setting.name} must be a positive whole number, not {value!r}"
        return parsed, ""
    if not isinstance(value, str):
        return None, f"{setting.name} must be a string, not {value!r}"
    if setting.choices and value not in setting.choices:
        return None, f"{setting.name} {value!r} is not one of {', '.join(repr(c) for c in setting.choices)}"
    return value, ""


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kib|mib|gib|kb|mb|gb)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: Any) -> Any:
    """``8388608``, ``"8 MiB"`` or ``"8MB"``; anything else is returned as is (and refused)."""
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    return value


def _cross_checks(values: dict[str, Any]) -> list[str]:
    problems = []
    if values.get("kms_key_id") and values.get("sse") != "aws:kms":
        problems.append('kms_key_id needs sse = "aws:kms"')
    mode, days = values.get("object_lock_mode"), values.get("object_lock_days")
    if mode and not days:
        problems.append("object_lock_mode needs object_lock_days (how long to retain each object)")
    if days and not mode:
        problems.append('object_lock_days needs object_lock_mode = "GOVERNANCE" or "COMPLIANCE"')
    part_size = values.get("multipart_part_size", 8 * MIB)
    if part_size < MIN_PART_SIZE:
        problems.append(f"multipart_part_size must be at least 5 MiB ({MIN_PART_SIZE}); S3 refuses smaller parts")
    threshold = values.get("multipart_threshold", 8 * MIB)
    if threshold < MIN_PART_SIZE:
        problems.append(f"multipart_threshold must be at least 5 MiB ({MIN_PART_SIZE})")
    if threshold > MAX_SINGLE_PUT:
        problems.append("multipart_threshold above 5 GiB: S3 refuses single uploads that large")
    endpoint = urlsplit(values.get("endpoint_url") or "")
    if endpoint.username or endpoint.password:
        problems.append(
            "endpoint_url must not contain a user or password; give credentials through "
            "boto3's standard chain (environment, profile, instance role)"
        )
    if values.get("max_concurrency", 16) > 256:
        problems.append("max_concurrency above 256 only queues requests; use 256 or less")
    return problems
