"""The settings of the IMAP connection types, their validation, and a typed view.

``imap`` and ``imap_failover`` share every setting here; ``imap_failover``
adds ``backs_up``. Validation refuses anything that could send the password
in clear: mailpipe speaks implicit TLS (IMAPS) only, so there is no setting
that turns TLS off, and port 143 — the plaintext IMAP port, where TLS would
at best be negotiated later with STARTTLS — is refused outright.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.types import Connection, Setting

AFTER_ARCHIVE_CHOICES = ("delete", "move", "seen")
PLAINTEXT_IMAP_PORT = 143
DEFAULT_PORT = 993
DEFAULT_POLL_SECONDS = 30
DEFAULT_TIMEOUT_SECONDS = 15
MAX_TIMEOUT_SECONDS = 50  # the core gives a whole test 60 s; ours must answer first

IMAP_SETTINGS: tuple[Setting, ...] = (
    Setting("server", "str", required=True, help="host name of the IMAP server"),
    Setting("port", "int", default=DEFAULT_PORT, help="IMAPS port (implicit TLS); 993 is the standard one"),
    Setting("username", "str", required=True, help="login name of the journaling mailbox"),
    Setting("password", "secret", required=True, help="password of the mailbox (encrypted at rest)"),
    Setting("mailbox", "str", default="INBOX", help="folder to collect from"),
    Setting(
        "after_archive",
        "str",
        default="delete",
        choices=AFTER_ARCHIVE_CHOICES,
        help="what to do with a message once it is safely spooled: delete (default), move, or seen",
    ),
    Setting("move_to", "str", help="folder for after_archive=move"),
    Setting(
        "poll_interval",
        "int",
        default=DEFAULT_POLL_SECONDS,
        help="seconds between checks when the server does not offer IDLE",
    ),
    Setting("ca_file", "path", help="PEM file of the CA that signed the server's certificate"),
    Setting("tls_verify", "bool", default=True, help="check the server's certificate (keep true)"),
    Setting(
        "timeout",
        "int",
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds allowed for connecting and for each IMAP command",
    ),
)

# RFC 1123 host names and IP literals; anything with a scheme, a path or a
# space is a URL pasted into the wrong field.
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ImapSettings:
    """A connection's settings, typed, with defaults applied."""

    server: str
    port: int
    username: str
    password: str
    mailbox: str
    after_archive: str
    move_to: str | None
    poll_interval: int
    ca_file: str | None
    tls_verify: bool
    timeout: float

    @classmethod
    def from_connection(cls, connection: Connection) -> "ImapSettings":
        return cls.from_mapping(connection.settings)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "ImapSettings":
        return cls(
            server=str(values["server"]).strip("[]"),
            port=int(values.get("port") or DEFAULT_PORT),
            username=str(values["username"]),
            password=str(values["password"]),
            mailbox=str(values.get("mailbox") or "INBOX"),
            after_archive=str(values.get("after_archive") or "delete"),
            move_to=values.get("move_to") or None,
            poll_interval=int(values.get("poll_interval") or DEFAULT_POLL_SECONDS),
            ca_file=values.get("ca_file") or None,
            tls_verify=values.get("tls_verify") is not False,
            timeout=float(values.get("timeout") or DEFAULT_TIMEOUT_SECONDS),
        )

    @property
    def source_key(self) -> str:
        """Identifies the mailbox a checkpoint belongs to: another server,
        account or folder starts from scratch (content dedup in the sink
        keeps a re-collection from storing anything twice)."""
        return f"{self.username}@{self.server}:{self.port}/{self.mailbox}"


def validate_imap_settings(settings: dict[str, Any]) -> list[str]:
    """Problems with the shared IMAP settings; normalises some in place."""
    problems: list[str] = []
    server = str(settings.get("server", "")).strip()
    if not _is_host(server):
        problems.append(
            f"server {server!r} is not a host name or IP address; give the bare name, "
            "e.g. imap.example.com (no imaps://, no port, no path)"
        )
    settings["server"] = server

    port = settings.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"port {port!r} must be a number from 1 to 65535 (IMAPS is usually 993)")
    elif port == PLAINTEXT_IMAP_PORT:
        problems.append(
            "port 143 is plaintext IMAP: mailpipe connects with implicit TLS only, so that the "
            "password and the mail never cross the network in clear; use the server's IMAPS "
            "port (usually 993)"
        )

    for name in ("username", "password", "mailbox", "move_to"):
        value = settings.get(name)
        if isinstance(value, str) and _CONTROL.search(value):
            problems.append(f"{name} contains a control character (line break, tab...); remove it")

    if not str(settings.get("mailbox") or "").strip():
        settings["mailbox"] = "INBOX"

    after = settings.get("after_archive", "delete")
    move_to = str(settings.get("move_to") or "").strip()
    if after == "move":
        if not move_to:
            problems.append("after_archive=move needs the folder to move to: add --set move_to=FOLDER")
        elif move_to == settings["mailbox"]:
            problems.append(
                f"move_to {move_to!r} is the mailbox being collected; choose another folder"
            )
    elif move_to:
        problems.append(
            f"move_to is only used with after_archive=move (after_archive is {after!r}); "
            "remove move_to or set after_archive=move"
        )

    poll = settings.get("poll_interval", DEFAULT_POLL_SECONDS)
    if not isinstance(poll, int) or poll < 1:
        problems.append(f"poll_interval {poll!r} must be a whole number of seconds, at least 1")

    timeout = settings.get("timeout", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        problems.append(f"timeout {timeout!r} must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}")

    ca_file = settings.get("ca_file")
    if ca_file:
        problem, resolved = _ca_file_problem(str(ca_file))
        if problem:
            problems.append(problem)
        else:
            settings["ca_file"] = resolved
    return problems


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return bool(_HOST_NAME.match(value))


def _ca_file_problem(value: str) -> tuple[str | None, str]:
    """The CA file is checked now, so a typo is found at ``add`` and not by
    the collector at night; stored absolute, since ``serve`` may run from
    another directory than the CLI."""
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        return f"ca_file {value!r} does not exist or is not a file; give the path of a PEM file", ""
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as error:
        return f"ca_file {value!r} is not a readable PEM certificate file ({error})", ""
    return None, str(path)
