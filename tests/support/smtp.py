"""Helpers for the SMTP tests: a running server with journaling connections,
and small real-client conveniences on top of smtplib."""

from __future__ import annotations

import json
import smtplib
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.helpers import ServerProcess, archived_files, cli, free_port, wait_until, write_config

JOURNAL_DOMAIN = "journal.test"


@dataclass
class SmtpSetup:
    """A config, its server and the connections made for a test module."""

    root: Path
    config: Path
    port: int
    host: str = "127.0.0.1"
    server: ServerProcess | None = None
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    def add(self, name: str, connection_type: str, enable: bool = True, **settings: str) -> dict[str, Any]:
        arguments = ["connections", "add", connection_type, "--description", name]
        for key, value in settings.items():
            arguments += ["--set", f"{key}={value}"]
        added = cli(self.config, *arguments, check=True).json
        if enable:
            cli(self.config, "connections", "enable", added["id"], check=True)
        self.connections[name] = added
        return added

    def address(self, name: str) -> str:
        return str(self.connections[name]["address"])

    def client(self, source: str | None = None, host: str | None = None) -> smtplib.SMTP:
        client = smtplib.SMTP(
            host or self.host, self.port, timeout=60,
            source_address=(source, 0) if source else None,
        )
        client.ehlo("client.test")
        return client

    def start(self) -> "SmtpSetup":
        self.server = ServerProcess(self.config).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def make_setup(root: Path, smtp: str = "", listen: list[str] | None = None) -> SmtpSetup:
    """A config under ``root``: SMTP on a free port plus the ``[smtp]`` lines in ``smtp``.

    ``listen`` replaces the one listen address by a list whose entries may
    say ``{port}``, e.g. ``["127.0.0.1:{port}", "[::1]:{port}"]``.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(root, smtp_port=port)
    text = config.read_text()
    journal_line = f'journal_domain = "{JOURNAL_DOMAIN}"\n'
    listen_line = f'listen = "127.0.0.1:{port}"\n'
    if listen is not None:
        entries = [entry.format(port=port) for entry in listen]
        text = text.replace(listen_line, f"listen = {json.dumps(entries)}\n")
    config.write_text(text.replace(journal_line, journal_line + smtp))
    return SmtpSetup(root, config, port)


def session_accepting(setup: SmtpSetup, address: str, mail_from: str = "journal@contoso.com") -> smtplib.SMTP | None:
    """An SMTP session once the server accepts ``address`` (e.g. after its connection
    was enabled: the server picks that up by hot reload), else None; for wait_until."""
    smtp = setup.client()
    smtp.mail(mail_from)
    code, _ = smtp.rcpt(address)
    smtp.rset()
    if code == 250:
        return smtp
    smtp.quit()
    return None


def with_console(setup: SmtpSetup) -> str:
    """Turn the console on for ``setup`` (a free loopback port); returns its URL."""
    port = free_port()
    setup.config.write_text(setup.config.read_text().replace(
        '[http]\nlisten = ""\n', f'[http]\nlisten = "127.0.0.1:{port}"\n'))
    return f"http://127.0.0.1:{port}"


def send(
    client: smtplib.SMTP, mail_from: str, recipients: list[str], data: bytes, options: tuple[str, ...] = ()
) -> tuple[int, str, dict[str, tuple[int, bytes]]]:
    """MAIL, RCPT for each recipient, and DATA if one was accepted.

    Returns the DATA reply (or ``(0, "")`` when no recipient was accepted)
    and every recipient's reply. ``data`` is sent as is after dot-stuffing,
    so tests control line endings exactly.
    """
    code, text = client.mail(mail_from, list(options))
    assert code == 250, (code, text)
    replies = {rcpt: client.rcpt(rcpt) for rcpt in recipients}
    if not any(reply[0] == 250 for reply in replies.values()):
        client.rset()
        return 0, "", replies
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    client.send(dot_stuff(data) + b".\r\n")
    code, text = client.getreply()
    return code, text.decode(), replies


# --- a client behind a load balancer, by hand (tests/peers/haproxy.py has the real one) ---

class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a load balancer: the PROXY header goes first, before the greeting is read."""

    def __init__(self, header: bytes, host: str, port: int, source: str | None = None) -> None:
        self.proxy_header = header
        super().__init__(host, port, timeout=60, source_address=(source, 0) if source else None)

    def _get_socket(self, host, port, timeout):  # type: ignore[no-untyped-def]
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.proxy_header)
        return sock


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 192.0.2.1 40000 25\r\n".encode()


def proxy_v2(source: str) -> bytes:
    addresses = socket.inet_aton(source) + socket.inet_aton("192.0.2.1") + struct.pack("!HH", 40001, 25)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def dot_stuff(data: bytes) -> bytes:
    """SMTP transparency (RFC 5321 4.5.2) without touching line endings; the
    message must end with CRLF for the end mark to follow a line."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


def queue_id_of(reply_text: str) -> str:
    assert "queued as " in reply_text, reply_text
    return reply_text.rsplit("queued as ", 1)[1].strip()


def archived(archive: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """(bytes, metadata) of every archived message whose metadata is written yet."""
    entries = []
    for path in archived_files(archive):
        try:
            entries.append((path.read_bytes(), json.loads(path.with_suffix(".json").read_text())))
        except FileNotFoundError:  # the sink writes the metadata just after the bytes
            continue
    return entries


def wait_for_arrival(archive: Path, queue_id: str, timeout: float = 60.0) -> list[tuple[bytes, dict[str, Any]]]:
    """Every archived copy whose arrivals include SMTP queue id ``queue_id``."""

    def found() -> list[tuple[bytes, dict[str, Any]]]:
        return [
            (raw, meta)
            for raw, meta in archived(archive)
            if any(a.get("smtp", {}).get("queue_id") == queue_id for a in meta.get("arrivals", []))
        ]

    return wait_until(found, timeout=timeout, message=f"queue id {queue_id} was not archived")


def arrival(meta: dict[str, Any], queue_id: str) -> dict[str, Any]:
    return next(a for a in meta["arrivals"] if a.get("smtp", {}).get("queue_id") == queue_id)


def pending_count(setup: SmtpSetup) -> int:
    """Messages in the spool queue, not yet delivered to every sink."""
    queue = setup.root / "data" / "spool" / "queue"
    return len([p for p in queue.glob("*.json") if not p.name.endswith(".state.json")]) if queue.exists() else 0


def spooled_count(setup: SmtpSetup) -> int:
    """Messages in the spool queue plus the archive: anything that was accepted.

    A message being delivered is briefly in both (the archive links the spooled
    file before the queue entry goes): wait for ``pending_count`` to reach 0
    before comparing counts."""
    return pending_count(setup) + len(archived_files(setup.archive))


def peak_rss_tree_kib(pid: int) -> int:
    """The sum of the peaks of ``pid`` and its child processes (the pipeline
    process, SMTP workers), in KiB: an upper bound of the tree's peak."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return peak_rss_kib(pid) + sum(peak_rss_kib(int(child)) for child in children)


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")
