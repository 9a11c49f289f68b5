"""`mailpipe serve` as a service manager drives it: arguments, one server per
data_dir, SIGHUP reloads, sd_notify.

Each test runs a real `mailpipe serve` process and talks to it with
smtplib, as a journaling mail server would.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import MAILPIPE, ServerProcess, wait_until
from tests.support.smtp import SmtpSetup, make_setup, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"


def _setup(root: Path, smtp: str = "") -> SmtpSetup:
    setup = make_setup(root, smtp=smtp)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    return setup


def _send_one(setup: SmtpSetup, subject: str) -> None:
    """One journal message over SMTP, then wait until it is archived."""
    with setup.client() as client:
        code, reply, _ = send(client, SENDER, [setup.address("o365")], f"Subject: {subject}\r\n\r\nx\r\n".encode())
    assert code == 250, reply
    wait_for_arrival(setup.archive, queue_id_of(reply))


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def _reloads(server: ServerProcess) -> list[dict]:
    return [e for e in server.logs() if e.get("msg") == "configuration reloaded" and "role" not in e]


def _hup(server: ServerProcess, reloads_before: int) -> dict:
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    return wait_until(lambda: _reloads(server)[reloads_before:], timeout=60,
                      message="no 'configuration reloaded' line after SIGHUP")[0]


# --- item 12: --workers ------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_workers_below_one_refused(config_path: Path, workers: str) -> None:
    result = subprocess.run([*MAILPIPE, "serve", "--config", str(config_path), "--workers", workers],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument --workers: must be a whole number, 1 or more" in result.stderr
    assert f"not {workers!r}" in result.stderr
    assert not (config_path.parent / "data").exists()  # refused before anything started


# --- item 13: one server per data_dir ----------------------------------------------------


def test_second_server_on_the_same_data_dir_refused(tmp_path: Path) -> None:
    setup = _setup(tmp_path).start()
    try:
        assert setup.server is not None and setup.server.process is not None
        first_pid = setup.server.process.pid
        # Another config file naming the same data_dir and another port: only the data_dir is shared.
        other = make_setup(tmp_path / "other").config
        _edit(other, 'data_dir = "data"', f'data_dir = "{tmp_path / "data"}"')
        second = subprocess.run([*MAILPIPE, "serve", "--config", str(other)], capture_output=True, text=True,
                                timeout=120, stdin=subprocess.DEVNULL)
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        assert f"another mailpipe serve (pid {first_pid}) is already running on data_dir" in second.stderr
        # Refused before it started anything: no line from a child (the pipeline process tags its lines).
        assert '"role"' not in second.stderr and "pipeline process ready" not in second.stderr
        assert setup.server.process.poll() is None
        _send_one(setup, "the first server still serves")
    finally:
        setup.stop()
    # Once the first is gone, a server on that data_dir starts (the lock went with the process).
    with ServerProcess(setup.config):
        pass


# --- item 14: SIGHUP ---------------------------------------------------------------------


def _tls_lines(certs) -> str:
    return f'tls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"\nhostname = "localhost"\n'


def _served_certificate(setup: SmtpSetup) -> bytes:
    with setup.client() as client:
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE  # the test compares the bytes itself
        client.starttls(context=unverified)
        assert client.sock is not None
        return client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]


def _der(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


def test_sighup_reloads_log_level_and_certificate_and_keeps_serving(tmp_path: Path, certs, untrusted_certs) -> None:
    live_cert, live_key = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    live_cert.write_bytes(certs.cert_file.read_bytes())
    live_key.write_bytes(certs.key_file.read_bytes())
    setup = _setup(tmp_path, smtp=f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\nhostname = "localhost"\n')
    setup.start()
    server = setup.server
    assert server is not None and server.process is not None
    try:
        assert _served_certificate(setup) == _der(certs.cert_file)

        # Nothing changed: the server stays up and still archives.
        unchanged = _hup(server, 0)
        assert unchanged["needs_restart"] == []
        _send_one(setup, "after the first SIGHUP")

        # The certificate renewed in place and the log level raised.
        live_cert.write_bytes(untrusted_certs.cert_file.read_bytes())
        live_key.write_bytes(untrusted_certs.key_file.read_bytes())
        _edit(setup.config, 'data_dir = "data"', 'data_dir = "data"\nlog_level = "WARNING"')
        reloaded = _hup(server, 1)
        assert "server.log_level" in reloaded["reloaded"] and "smtp.tls_cert" in reloaded["reloaded"]
        assert reloaded["needs_restart"] == []
        server.wait_for_log("TLS certificate reloaded")
        assert _served_certificate(setup) == _der(untrusted_certs.cert_file)
        # The pipeline process reloaded too (its own line, tagged with its role).
        server.wait_for_log("configuration reloaded", role="pipeline")
        marker = len(server.lines)
        _send_one(setup, "after the log level went to WARNING")
        after = server.logs()[marker:]
        assert not [e for e in after if e.get("level") == "info"], after  # neither the server nor the pipeline

        # A setting that needs a restart is named (a warning: seen at level WARNING), not applied;
        # the server keeps serving.
        _edit(setup.config, f'listen = "127.0.0.1:{setup.port}"', 'listen = "127.0.0.1:1"')
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("changed settings take effect only after a restart", settings=["smtp.listen"])
        _send_one(setup, "still on the old port")

        # A certificate file that cannot be loaded: logged, the last good certificate stays.
        live_cert.write_text("not a certificate")
        server.process.send_signal(signal.SIGHUP)
        failure = server.wait_for_log("could not reload part of the configuration")
        assert str(live_cert) in failure["error"]
        assert _served_certificate(setup) == _der(untrusted_certs.cert_file)

        # A config with errors, then one that is not even text: logged, the old config stays.
        setup.config.write_text("[smtp\nbroken")
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("configuration not reloaded")
        setup.config.write_bytes(b"\xff\xfe not UTF-8")
        server.process.send_signal(signal.SIGHUP)
        # Two processes (the server and the pipeline process), two bad files: four lines.
        wait_until(lambda: sum("configuration not reloaded" in str(e.get("msg")) for e in server.logs()) >= 4,
                   timeout=60, message="each process logs the unreadable config")
        _send_one(setup, "after a bad config")
        assert server.process.poll() is None
        assert server.stop() == 0
    finally:
        setup.stop()


def test_sighup_reaches_smtp_worker_processes(tmp_path: Path, certs) -> None:
    setup = _setup(tmp_path, smtp=_tls_lines(certs))
    setup.server = ServerProcess(setup.config, args=("--workers", "2")).start()
    server = setup.server
    try:
        server.wait_for_log("SMTP worker processes ready")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        for role in ("smtp worker 1", "smtp worker 2", "pipeline"):
            server.wait_for_log("configuration reloaded", role=role)
        assert sum(1 for e in server.logs() if e.get("msg") == "TLS certificate reloaded") == 2
        assert not [e for e in server.logs() if e.get("msg") == "child process exited; restarting"]
        _send_one(setup, "after SIGHUP with workers")
    finally:
        setup.stop()


@pytest.mark.peer
def test_sighup_rebuilds_a_sink_whose_optional_settings_changed(tmp_path: Path, moto_s3) -> None:
    """An optional setting (the s3 sink's prefix) applies to the next message;
    a required one (the filesystem sink's path) is named as needing a restart."""
    moto_s3.client().create_bucket(Bucket="mail-archive")
    setup = _setup(tmp_path)
    setup.config.write_text(setup.config.read_text() + (
        f'\n[[sinks]]\ntype = "s3"\nname = "cloud"\nbucket = "mail-archive"\n'
        f'endpoint_url = "{moto_s3.endpoint_url}"\nprefix = "before/"\n'
    ))
    setup.start()
    server = setup.server
    assert server is not None and server.process is not None

    def keys() -> list[str]:
        listing = moto_s3.client().list_objects_v2(Bucket="mail-archive")
        return sorted(item["Key"] for item in listing.get("Contents", []) if item["Key"].endswith(".eml"))

    try:
        _send_one(setup, "first")
        wait_until(lambda: len(keys()) == 1, timeout=60)
        assert keys()[0].startswith("before/")

        _edit(setup.config, 'prefix = "before/"', 'prefix = "after/"')
        reloaded = _hup(server, 0)
        assert reloaded["reloaded"] == [] and reloaded["needs_restart"] == []  # the server process has no sinks
        server.wait_for_log("sink reloaded", role="pipeline", sink="cloud", settings=["prefix"])
        _send_one(setup, "second")
        wait_until(lambda: len(keys()) == 2, timeout=60)
        assert [k.split("/")[0] for k in keys()] == ["after", "before"]

        _edit(setup.config, 'path = "archive"', 'path = "elsewhere"')
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("changed settings take effect only after a restart", settings=["sinks.filesystem.path"])
        _send_one(setup, "third, still in the old archive")
    finally:
        setup.stop()


# --- sd_notify ---------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET may be."""
    name = f"mailpipe-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(60)  # a bound for a broken build, not a timing assertion
        yield sock, "@" + name


def _next_state(sock: socket.socket) -> dict[str, str]:
    datagram = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in datagram.splitlines())


def test_sd_notify_ready_reloading_stopping(tmp_path: Path, notify_socket) -> None:
    sock, address = notify_socket
    setup = _setup(tmp_path)
    server = ServerProcess(setup.config, env={"NOTIFY_SOCKET": address})
    server.start()
    try:
        assert _next_state(sock)["READY"] == "1"
        _send_one(setup, "served once READY")  # READY=1 meant listening, pipeline up
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        reloading = _next_state(sock)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert _next_state(sock)["READY"] == "1"
        assert server.stop() == 0
        assert _next_state(sock) == {"STOPPING": "1"}
    finally:
        server.kill()


def test_sd_notify_to_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailpipe.server import sd_notify

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify.ready("serving")
        assert _next_state(sock) == {"READY": "1", "STATUS": "serving"}
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify.stopping()  # not under a service manager: nothing to do


def test_sd_notify_failure_does_not_stop_the_server(tmp_path: Path) -> None:
    setup = _setup(tmp_path)
    with ServerProcess(setup.config, env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) as server:
        server.wait_for_log("cannot notify the service manager")
        _send_one(setup, "served without a service manager listening")
