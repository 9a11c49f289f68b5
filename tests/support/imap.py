"""Helpers shared by the tests/plugins/imap/ modules (real Dovecot over TLS)."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
from pathlib import Path
from typing import Any, Iterable

from tests.support.helpers import cli
from tests.support.peers.dovecot import Dovecot


def add_imap_connection(
    config: Path,
    dovecot: Dovecot,
    user: str,
    password: str,
    connection_type: str = "imap",
    enable: bool = False,
    **settings: Any,
) -> str:
    """``connections add`` through the CLI, as an operator would; returns the id."""
    values: dict[str, Any] = {
        "server": dovecot.host,
        "port": dovecot.imaps_port,
        "username": user,
        "password": password,
        "ca_file": str(dovecot.ca_file),
        **settings,
    }
    return add_connection_with(config, connection_type, values, enable, f"test {connection_type}")


def add_connection_with(
    config: Path, connection_type: str, values: dict[str, Any], enable: bool, description: str
) -> str:
    """``connections add TYPE --set KEY=VALUE ...`` through the CLI (then
    ``enable`` if asked); returns the id."""
    args = ["connections", "add", connection_type, "--description", description]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    connection_id = str(cli(config, *args, check=True).json["id"])
    if enable:
        cli(config, "connections", "enable", connection_id, check=True)
    return connection_id


def make_message(number: int, body_bytes: int = 512, subject: str = "journal") -> bytes:
    """A distinct CRLF message (distinct content, so distinct archive entries)."""
    token = secrets.token_hex(8)
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n"
    body = (line * (body_bytes // len(line) + 1))[:body_bytes]
    return (
        f"From: sender{number}@contoso.com\r\n"
        f"To: journal@contoso.com\r\n"
        f"Subject: {subject} {number} {token}\r\n"
        f"Message-ID: <{number}.{token}@contoso.com>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode() + body + b"\r\n"


def bulk_append(dovecot: Dovecot, user: str, messages: Iterable[bytes], mailbox: str = "INBOX") -> None:
    """APPEND many messages over one session (the fixture's ``append`` logs in per message)."""
    with dovecot.session(user) as client:
        for message in messages:
            typ, data = client.append(f'"{mailbox}"', None, None, message)
            assert typ == "OK", (typ, data)


def multi_append(dovecot: Dovecot, user: str, messages: list[bytes], per_command: int = 500) -> None:
    """APPEND many messages to INBOX in few commands (MULTIAPPEND, RFC 3502, with
    LITERAL+ literals): one round trip and one save transaction per
    ``per_command`` messages, where ``bulk_append`` (imaplib) waits for the
    server once per message — thousands of messages in seconds, not minutes,
    on a loaded machine."""
    with socket.create_connection((dovecot.host, dovecot.imaps_port), timeout=120) as raw, \
            dovecot.ssl_context().wrap_socket(raw, server_hostname=dovecot.host) as tls:
        replies = tls.makefile("rb")
        replies.readline()  # the greeting

        def command(tag: bytes, parts: list[bytes]) -> None:
            tls.sendall(b"".join(parts))
            while (line := replies.readline()) and not line.startswith(tag + b" "):
                pass
            assert line.split(b" ")[1:2] == [b"OK"], line

        command(b"a0", [b'a0 LOGIN "%s" "%s"\r\n' % (user.encode(), dovecot.password(user).encode())])
        for number, start in enumerate(range(0, len(messages), per_command), start=1):
            tag = b"a%d" % number
            parts = [tag + b" APPEND INBOX"]
            for message in messages[start : start + per_command]:
                parts += [b" {%d+}\r\n" % len(message), message]
            command(tag, parts + [b"\r\n"])
        command(b"z", [b"z LOGOUT\r\n"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archived(archive: Path, connection_id: str | None = None) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Archived messages by sha256: (bytes, metadata JSON)."""
    pattern = f"{connection_id}/??/*.eml" if connection_id else "*/??/*.eml"
    found = {}
    for eml in sorted(archive.glob(pattern)):
        meta = eml.with_suffix(".json")
        if not meta.exists():  # the .eml is renamed in before its .json
            continue
        found[eml.stem] = (eml.read_bytes(), json.loads(meta.read_text()))
    return found


def spooled_hashes(data_dir: Path) -> set[str]:
    """sha256 of every committed message still in the spool queue."""
    hashes = set()
    for meta in (data_dir / "spool" / "queue").glob("*.json"):
        if meta.name.endswith(".state.json"):
            continue
        try:
            hashes.add(json.loads(meta.read_text())["sha256"])
        except (OSError, ValueError, KeyError):
            continue
    return hashes
