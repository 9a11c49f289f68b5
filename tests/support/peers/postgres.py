"""A real PostgreSQL server for the state-store tests (Debian's ``postgresql`` package).

``initdb`` in a fresh directory under /tmp, the server on a high free
loopback port with its unix socket in that directory, run as an
unprivileged system user (PostgreSQL refuses to run as root; the user
``mailpipe-test`` is created when missing). Trust authentication on
loopback: a test peer, not a deployment. Each test gets a database of its
own (``create_database``).

Every statement the server receives is logged with its database name
(``log_statement = all``), so a test can count what mailpipe sent to one
database (``statements``) from the server's side, not mailpipe's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .process import LOOPBACK, die_with_parent, free_port

PG_BIN = Path(os.environ.get("MAILPIPE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "mailpipe-test"
SUPERUSER = "postgres"
START_TIMEOUT = 60.0


class PostgresError(Exception):
    pass


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, timeout=60,
        )
        return pwd.getpwnam(name)


class Postgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailpipe-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _run_as(self) -> dict[str, int]:
        if os.geteuid() != 0:
            return {}
        account = _ensure_user(RUN_AS)
        return {"user": account.pw_uid, "group": account.pw_gid}

    def start(self) -> None:
        """initdb on the first start; later starts (after ``stop``) reuse the data and the port."""
        ids = self._run_as()
        if not self.data.exists():
            if ids:
                os.chown(self.root, ids["user"], ids["group"])
            initdb = subprocess.run(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"],
                capture_output=True, text=True, timeout=180, cwd=self.root, **ids,  # type: ignore[call-overload]
            )
            if initdb.returncode != 0:
                raise PostgresError(f"initdb failed: {initdb.stderr.strip() or initdb.stdout.strip()}")
            self.port = free_port()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                 "-c", f"listen_addresses={LOOPBACK}", "-c", "log_statement=all",
                 "-c", "log_line_prefix=[%d] ", "-c", "max_connections=300",
                 # a throwaway test cluster: durability is not under test here, speed on a shared machine is
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM), **ids,  # type: ignore[call-overload]
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise PostgresError(f"postgres exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=5).close()
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresError(f"postgres did not accept connections: {error}") from None
                time.sleep(0.2)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, prefix: str = "mailpipe") -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def statements(self, url: str) -> int:
        """Statements the server has received so far on the database of ``url``."""
        marker = f"[{url.rsplit('/', 1)[1]}] LOG:  "
        count = 0
        with open(self.log, errors="replace") as log:
            for line in log:
                if line.startswith(marker) and line[len(marker):].startswith(("statement:", "execute ")):
                    count += 1
        return count

    def stop(self) -> None:
        """A "fast" shutdown (SIGINT): clients are disconnected; ``start`` brings it back."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
