#!/usr/bin/env python3
"""CI smoke test of a fresh install: what a new operator does first.

Builds a wheel from this source tree, installs it WITHOUT extras into a
fresh venv in a temporary directory, starts ``mailpipe serve`` on the
embedded default (SMTP on 127.0.0.1:2525, data in ./var) from an empty
directory, adds and enables an smtp_o365 connection with the CLI, sends one
journal message to its unique address with smtplib, waits until it is in
the archive and runs ``mailpipe archive verify``. Any failure exits 1 with
the server's log, so a dependency that only the test extras bring in (or a
crash on the README's happy path) fails CI.

Standard library only: it runs with the system's python3 before any venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMTP = ("127.0.0.1", 2525)  # the embedded default's listen address
# Bounds that only keep a broken build from hanging CI; the machine may be slow.
START_SECONDS = 120
ARCHIVE_SECONDS = 120
SOURCE_IGNORED = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__",
                                        ".pytest_cache")


class SmokeFailure(Exception):
    pass


def run(command: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(str(c) for c in command), flush=True)
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=900)
    if done.returncode != 0:
        raise SmokeFailure(f"{command[0]} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def build_and_install(work: Path, env: dict[str, str]) -> Path:
    """The wheel of a copy of the source tree (so the tree stays clean), in a
    fresh venv with no extras. Returns the venv's bin directory."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=SOURCE_IGNORED)
    run([sys.executable, "-m", "venv", work / "venv"], work, env)
    bin_dir = work / "venv" / "bin"
    run([bin_dir / "pip", "install", "-q", "--upgrade", "pip"], work, env)
    run([bin_dir / "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", source], work, env)
    [wheel] = sorted((work / "dist").glob("mailpipe-*.whl"))
    run([bin_dir / "pip", "install", "-q", wheel], work, env)
    installed = run([bin_dir / "pip", "list", "--format=json"], work, env).stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    test_only = names & {"pytest", "trio", "moto", "psutil"}
    if test_only:
        raise SmokeFailure(f"the plain install pulled in test extras: {sorted(test_only)}")
    return bin_dir


def wait_for(predicate, seconds: float, what: str, server: subprocess.Popen[bytes] | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if server is not None and server.poll() is not None:
            raise SmokeFailure(f"mailpipe serve exited with {server.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise SmokeFailure(f"{what}: not within {seconds} s")


def send_journal_message(address: str) -> None:
    message = EmailMessage()
    message["From"] = "journal@example.com"
    message["To"] = address
    message["Subject"] = "mailpipe install smoke test"
    message.set_content("one message through a fresh install\n")

    def try_send() -> bool:
        with smtplib.SMTP(*SMTP, timeout=60) as client:
            try:
                client.send_message(message, from_addr="journal@example.com", to_addrs=[address])
            except smtplib.SMTPRecipientsRefused:
                return False  # the server has not yet seen the connection enabled
        return True

    wait_for(try_send, 30, "the enabled connection accepting mail")


def smoke(work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAILPIPE_CONFIG", "VIRTUAL_ENV", "PYTHONPATH")}
    bin_dir = build_and_install(work, env)
    mailpipe = bin_dir / "mailpipe"
    home = work / "empty"  # the operator's empty directory: the embedded default puts ./var here
    home.mkdir()
    with socket.socket() as probe:
        if probe.connect_ex(SMTP) == 0:
            raise SmokeFailure(f"something already listens on {SMTP[0]}:{SMTP[1]}; the embedded default needs it")
    log_path = work / "serve.log"
    with open(log_path, "wb") as log_file:
        print(f"+ (cd {home} && {mailpipe} serve)", flush=True)
        server = subprocess.Popen([str(mailpipe), "serve"], cwd=home, env=env, stdin=subprocess.DEVNULL,
                                  stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: b"mailpipe is running" in log_path.read_bytes(), START_SECONDS,
                     "mailpipe serve to start", server)
            added = json.loads(run([mailpipe, "connections", "add", "smtp_o365", "--description", "smoke",
                                    "--set", "undeliverable_journal_address=journal-ndr@example.com", "--json"],
                                   home, env).stdout)
            run([mailpipe, "connections", "enable", added["id"], "--json"], home, env)
            send_journal_message(added["address"])
            archive = home / "var" / "archive"
            wait_for(lambda: list(archive.rglob("*.eml")), ARCHIVE_SECONDS, "the message in the archive", server)
            verified = run([mailpipe, "archive", "verify", "--json"], home, env).stdout
            checked = json.loads(verified).get("checked")
            if checked is not None and checked < 1:
                raise SmokeFailure(f"archive verify checked no message: {verified}")
            server.send_signal(signal.SIGTERM)
            code = server.wait(120)
            if code != 0:
                raise SmokeFailure(f"mailpipe serve exited with {code} on SIGTERM")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    if b"Traceback" in log_path.read_bytes():
        raise SmokeFailure("the server's log has a traceback")
    print("smoke test passed: fresh install served, archived and verified one message", flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mailpipe-smoke-"))
    try:
        smoke(work)
    except (SmokeFailure, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as error:
        print(f"smoke test FAILED: {error}", file=sys.stderr)
        log_path = work / "serve.log"
        if log_path.exists():
            print("--- mailpipe serve log ---", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-20000:], file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
