"""A private, real Dovecot IMAP server for tests.

Why a real server: the IMAP collectors must survive what real servers do
(literal framing, IDLE, UIDVALIDITY, BYE on shutdown, TLS quirks).  A fake
server only ever does what its author expected.

What this instance is:

* its own config, ``base_dir``, ``state_dir`` and log file in a private
  temporary directory, started as ``dovecot -F -c CONFIG`` in a new session
  (process group), so it never touches the system Dovecot (``/etc/dovecot``,
  ``/run/dovecot``) or another test run's instance;
* listening only on 127.0.0.1: an implicit-TLS IMAPS port (certificate from
  :mod:`peers.certs`) and a plaintext IMAP port (for "this port does not speak
  TLS" tests).  Dovecot treats loopback connections as secure, so LOGIN also
  works on the plaintext port;
* users in passwd-files with ``{PLAIN}`` passwords, one file per user
  (``users.d/%u``).  Why one per user: Dovecot 2.3 re-checks a passwd-file
  it has already read at most once per second (observed with 2.3.19: a user
  appended to a shared file was refused right after being added); a file
  Dovecot has never seen is read at once.  Removing a user or changing a password does need that second, and
  :meth:`Dovecot.remove_user` / :meth:`Dovecot.add_user` wait for it;
* no authentication penalty (the ``anvil-auth-penalty`` listener is made
  unusable, the documented way to turn it off) and no failure delay, so
  that a wrong-password test does not slow down every later login from
  127.0.0.1;
* mail in Maildir under ``<dir>/home/<user>/Maildir``.

Running as root: Dovecot refuses to access mail as UID 0 (``userdb returned
0 as uid``, and passwd-file rejects UID 0 outright).  So all virtual users
share one unprivileged system account, ``nobody``/its primary group
(``mail_uid``/``mail_gid``), and the private directory is world-traversable
(0755) so that the ``dovecot`` auth user can read the passwd-files and
``nobody`` can reach the mail homes.  That is also why the instance lives in
its own ``mkdtemp`` directory and not under pytest's ``tmp_path`` (mode 0700
and owned by root, so ``nobody`` could not get in).  Root (the test process)
can of course still read everything directly.

Outages: :meth:`Dovecot.stop` / :meth:`Dovecot.start` restart on the same
ports with the same mail and users (the directory is kept until
:meth:`Dovecot.close`); :meth:`Dovecot.kill` is an abrupt crash (SIGKILL to the
whole process group); :meth:`Dovecot.drop_connections` ends the client
sessions while the server stays up.

Nothing outlives the tests: the master gets SIGTERM from the kernel if the
test process dies (``PR_SET_PDEATHSIG``), and shuts its children down.
"""

from __future__ import annotations

import contextlib
import imaplib
import math
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from .certs import CertBundle, make_certs
from .process import LOOPBACK, die_with_parent, free_port

DOVECOT_BINARY = "/usr/sbin/dovecot"
KEEP_DIRS_ENV = "MAILPIPE_KEEP_PEER_DIRS"

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+-]{0,63}$")
_UID_RE = re.compile(rb"UID (\d+)")
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")
_APPENDUID_RE = re.compile(rb"\[APPENDUID \d+ (\d+)\]")


class DovecotError(RuntimeError):
    """Dovecot did not start, or did not stop, as asked."""


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is *pgid*.

    Why /proc and not ``killpg(pgid, 0)``: orphaned children are reparented
    to PID 1, which in a container may never reap them; a zombie is harmless
    and must not make :meth:`Dovecot.stop` wait forever.
    """
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." - comm may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _quote(mailbox: str) -> str:
    """Quote a mailbox name for imaplib, which sends arguments verbatim."""
    if not mailbox.isascii():
        raise ValueError(f"non-ASCII mailbox names need modified UTF-7; not supported here: {mailbox!r}")
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, list], what: str) -> list:
    typ, data = result
    if typ != "OK":
        raise DovecotError(f"{what} failed: {typ} {data!r}")
    return data


class Dovecot:
    """A private Dovecot instance on 127.0.0.1 (see the module docstring for why and how).

    Usable as a context manager (``with Dovecot() as server:``) which starts it
    and finally :meth:`close`\\ s it.
    """

    def __init__(
        self,
        certs: CertBundle | None = None,
        *,
        parent_dir: str | os.PathLike[str] | None = None,
        binary: str = DOVECOT_BINARY,
        mail_account: str = "nobody",
        imaps_port: int | None = None,
        imap_plain_port: int | None = None,
    ) -> None:
        self._binary = binary
        self._fixed_ports = imaps_port is not None or imap_plain_port is not None
        self._imaps_port = imaps_port or free_port()
        self._imap_plain_port = imap_plain_port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mailpipe-dovecot-", dir=parent_dir))
        os.chmod(self.directory, 0o755)
        self.certs = certs or make_certs(self.directory / "certs")
        try:
            account = pwd.getpwnam(mail_account)
            self._mail_uid, self._mail_gid = account.pw_uid, account.pw_gid
        except KeyError:
            self._mail_uid = self._mail_gid = 65534
        self.home_root = self.directory / "home"
        self.home_root.mkdir()
        os.chown(self.home_root, self._mail_uid, self._mail_gid)
        self.users_dir = self.directory / "users.d"
        self.users_dir.mkdir()
        os.chmod(self.users_dir, 0o755)  # Dovecot's auth process reads it, whatever the test process's umask
        self.config_file = self.directory / "dovecot.conf"
        self.log_file = self.directory / "dovecot.log"
        self.stderr_file = self.directory / "dovecot.stderr"
        self._users: dict[str, str] = {}
        self._last_mtime: dict[str, int] = {}  # per user file, including removed ones
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    # -- properties -----------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def imaps_port(self) -> int:
        return self._imaps_port

    @property
    def imap_plain_port(self) -> int:
        return self._imap_plain_port

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA (hostname checks on)."""
        return self.certs.client_context()

    def maildir(self, user: str) -> Path:
        """The user's Maildir (owned by the mail account; root may read it)."""
        return self.home_root / user / "Maildir"

    # -- configuration ---------------------------------------------------------------

    def _config_text(self) -> str:
        d = self.directory
        return f"""\
# Generated by tests/support/peers/dovecot.py - a private test instance.
base_dir = {d}/run
state_dir = {d}/state
instance_name = mailpipe-test-{d.name}
log_path = {self.log_file}
info_log_path = {self.log_file}
protocols = imap
listen = {LOOPBACK}
shutdown_clients = yes

ssl = yes
ssl_cert = <{self.certs.cert_file}
ssl_key = <{self.certs.key_file}

auth_mechanisms = plain login
# Wrong-password tests must not slow down the logins after them.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.users_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.users_dir}/%u
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

# Dovecot refuses UID 0 for mail: every virtual user maps to one unprivileged account.
mail_uid = {self._mail_uid}
mail_gid = {self._mail_gid}
mail_home = {self.home_root}/%u
mail_location = maildir:~/Maildir
# Tests open several sessions per user (collector, IDLE, assertions).
mail_max_userip_connections = 200
# IDLE uses inotify; poll every second in case inotify is unavailable.
mailbox_idle_check_interval = 1 secs

service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self._imap_plain_port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {self._imaps_port}
    ssl = yes
  }}
}}
"""

    @staticmethod
    def _wait_for_passwd_recheck(written_at: float) -> None:
        """Sleep until Dovecot's once-a-second passwd-file re-check must see a change."""
        time.sleep(max(0.0, math.floor(written_at) + 1.05 - time.time()))

    def add_user(self, name: str, password: str | None = None, wait: bool = True) -> str:
        """Create a user (effective at once) or change a password; works before start and while running.

        Changing an existing user's password takes Dovecot up to a second to
        notice; with *wait* this returns only after that.  Returns the
        password (a random one when *password* is None).
        """
        if not _USER_RE.match(name):
            raise ValueError(f"unsupported user name for the test passwd-file: {name!r}")
        if password is None:
            password = secrets.token_urlsafe(12)
        if any(c in password for c in ":\n\r\0"):
            raise ValueError("passwd-file passwords cannot contain ':' or line breaks")
        home = self.home_root / name
        home.mkdir(exist_ok=True)
        os.chown(home, self._mail_uid, self._mail_gid)
        # A name written before (even if removed since) may still be cached by Dovecot.
        seen_before = name in self._last_mtime
        temporary = self.users_dir / f".{name}.tmp"
        temporary.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        os.chmod(temporary, 0o644)
        # Dovecot compares mtime (whole seconds) and size: make sure the mtime moves.
        mtime = max(int(time.time()), self._last_mtime.get(name, 0) + 1)
        os.utime(temporary, (mtime, mtime))
        written_at = time.time()
        os.replace(temporary, self.users_dir / name)
        self._last_mtime[name] = mtime
        self._users[name] = password
        if seen_before and wait:
            self._wait_for_passwd_recheck(written_at)
        return password

    def remove_user(self, name: str, wait: bool = True) -> None:
        """Remove a user (mail stays on disk); with *wait*, return once logins are refused."""
        self._users.pop(name, None)
        written_at = time.time()
        with contextlib.suppress(FileNotFoundError):
            (self.users_dir / name).unlink()
            if wait:
                self._wait_for_passwd_recheck(written_at)

    def password(self, user: str) -> str:
        return self._users[user]

    @property
    def users(self) -> dict[str, str]:
        return dict(self._users)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start Dovecot and wait until both ports answer with an IMAP greeting."""
        if self._closed:
            raise DovecotError("this Dovecot instance was closed")
        if self.running:
            return
        if not os.path.exists(self._binary):
            raise DovecotError(f"{self._binary} not found")
        attempts = 1 if self._fixed_ports else 3
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                return
            except DovecotError:
                in_use = "Address already in use" in self.log_tail(200)
                self._terminate(signal.SIGKILL)
                if not in_use or attempt == attempts - 1:
                    raise
                # Somebody grabbed a port between free_port() and bind(): pick new ones.
                self._imaps_port, self._imap_plain_port = free_port(), free_port()

    def _start_once(self, timeout: float) -> None:
        self.config_file.write_text(self._config_text())
        with open(self.stderr_file, "ab") as stderr:
            self._process = subprocess.Popen(
                [self._binary, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.directory,
                start_new_session=True,  # own process group: stop() can sweep all children
                preexec_fn=die_with_parent(signal.SIGTERM),  # graceful: the master stops its children
            )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with status {self._process.returncode} during start\n{self.log_tail()}"
                )
            try:
                self._probe_greetings()
                return
            except (OSError, imaplib.IMAP4.error) as error:
                last_error = error
                time.sleep(0.05)
        raise DovecotError(f"dovecot did not answer within {timeout}s ({last_error!r})\n{self.log_tail()}")

    def _probe_greetings(self) -> None:
        with socket.create_connection((LOOPBACK, self._imap_plain_port), timeout=2) as plain:
            greeting = plain.recv(1024)
            if not greeting.startswith(b"* OK"):
                raise OSError(f"unexpected greeting on plaintext port: {greeting!r}")
        with socket.create_connection((LOOPBACK, self._imaps_port), timeout=2) as raw:
            with self.ssl_context().wrap_socket(raw, server_hostname=LOOPBACK) as tls:
                greeting = tls.recv(1024)
                if not greeting.startswith(b"* OK"):
                    raise OSError(f"unexpected greeting on IMAPS port: {greeting!r}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: clients get ``* BYE``), then sweep the process group.

        Ports, users and mail are kept; :meth:`start` brings the same server back.
        """
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash: SIGKILL every process of the instance at once (connections just die)."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    @contextlib.contextmanager
    def down(self, abrupt: bool = False) -> Iterator[None]:
        """``with server.down(): ...`` - an outage for the duration of the block."""
        if abrupt:
            self.kill()
        else:
            self.stop()
        try:
            yield
        finally:
            self.start()

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        pgid = process.pid  # start_new_session=True: the master leads its own group
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                process.wait(5)
        # The master is gone; make sure no child (log, imap, anvil, ...) outlives it.
        deadline = time.monotonic() + 5
        while members := _group_members(pgid):
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot processes {members} would not die")
            time.sleep(0.02)
        self._process = None

    def processes(self) -> list[int]:
        """PIDs of the live processes of this instance (master and children)."""
        return _group_members(self._process.pid) if self._process is not None else []

    def drop_connections(self, abrupt: bool = False) -> int:
        """End every logged-in IMAP session while the server stays up.

        Graceful (SIGTERM) sends ``* BYE Server shutting down.``; abrupt
        (SIGKILL) just closes the TCP connection.  Returns how many sessions
        were ended.  New connections are accepted as usual.
        """
        sig = signal.SIGKILL if abrupt else signal.SIGTERM
        ended: list[int] = []
        for pid in self.processes():
            if _process_name(pid) == "imap":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    ended.append(pid)
        # Return only once they are gone, so the caller's next step sees a dead session.
        deadline = time.monotonic() + 10
        while (alive := [pid for pid in ended if pid in self.processes()]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive:
            raise DovecotError(f"imap processes {alive} did not exit")
        return len(ended)

    def close(self) -> None:
        """Stop and delete the private directory (kept if MAILPIPE_KEEP_PEER_DIRS=1)."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            if os.environ.get(KEEP_DIRS_ENV) != "1":
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """The end of Dovecot's log and stderr, for error messages."""
        parts = []
        for path in (self.log_file, self.stderr_file):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no dovecot log output)"

    # -- IMAP helpers (the test's own view of the mailbox, over real IMAPS) ----------

    @contextlib.contextmanager
    def session(self, user: str, password: str | None = None) -> Iterator[imaplib.IMAP4_SSL]:
        """A logged-in ``imaplib.IMAP4_SSL`` session, verified against the CA."""
        client = imaplib.IMAP4_SSL(LOOPBACK, self._imaps_port, ssl_context=self.ssl_context(), timeout=30)
        try:
            client.login(user, password if password is not None else self._users[user])
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(
        self,
        user: str,
        message: bytes,
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
    ) -> int | None:
        """IMAP APPEND *message*; returns its UID (from UIDPLUS ``APPENDUID``).

        Note: imaplib (like IMAP itself) sends lines ending in CRLF; bare LF or
        CR are converted.  Use CRLF messages when comparing bytes.
        """
        flag_text = "(" + " ".join(flags) + ")" if flags else None
        date_text = imaplib.Time2Internaldate(internal_date) if internal_date is not None else None
        with self.session(user) as client:
            data = _check(client.append(_quote(mailbox), flag_text, date_text, message), "APPEND")
        found = _APPENDUID_RE.search(data[0] or b"")
        return int(found.group(1)) if found else None

    def create_mailbox(self, user: str, name: str) -> None:
        """CREATE and SUBSCRIBE a mailbox."""
        with self.session(user) as client:
            _check(client.create(_quote(name)), f"CREATE {name}")
            _check(client.subscribe(_quote(name)), f"SUBSCRIBE {name}")

    def mailboxes(self, user: str) -> list[str]:
        """Names from LIST "" "*" (ASCII names only)."""
        with self.session(user) as client:
            data = _check(client.list('""', "*"), "LIST")
        names = []
        for line in data:
            if isinstance(line, bytes):
                match = re.search(rb'\) "[^"]*" (.*)$', line)
                if match:
                    names.append(match.group(1).decode().strip('"'))
        return names

    def uids(self, user: str, mailbox: str = "INBOX") -> list[int]:
        """UIDs in *mailbox*, ascending (read-only: EXAMINE)."""
        with self.session(user) as client:
            return self._uids(client, mailbox)

    @staticmethod
    def _uids(client: imaplib.IMAP4, mailbox: str) -> list[int]:
        _check(client.select(_quote(mailbox), readonly=True), f"EXAMINE {mailbox}")
        data = _check(client.uid("SEARCH", "ALL"), "UID SEARCH")
        return sorted(int(uid) for uid in (data[0] or b"").split())

    def fetch_all(self, user: str, mailbox: str = "INBOX") -> dict[int, bytes]:
        """Every message's exact bytes (``BODY.PEEK[]``: does not set \\Seen), by UID."""
        with self.session(user) as client:
            if not self._uids(client, mailbox):
                return {}
            data = _check(client.uid("FETCH", "1:*", "(UID BODY.PEEK[])"), "UID FETCH")
        messages: dict[int, bytes] = {}
        for item in data:
            if isinstance(item, tuple):
                found = _UID_RE.search(item[0])
                if found:
                    messages[int(found.group(1))] = item[1]
        return messages

    def flags(self, user: str, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """Flags by UID; ``\\Recent`` is left out because it depends on the session."""
        with self.session(user) as client:
            if not self._uids(client, mailbox):
                return {}
            data = _check(client.uid("FETCH", "1:*", "(UID FLAGS)"), "UID FETCH")
        result: dict[int, set[str]] = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid, flags = _UID_RE.search(line), _FLAGS_RE.search(line)
            if uid and flags:
                result[int(uid.group(1))] = {f for f in flags.group(1).decode().split() if f != "\\Recent"}
        return result
