"""The state store on SQLite and PostgreSQL alike (issue 15, items 1, 2, 4 and 6).

Real ``mailpipe`` commands and ``mailpipe serve`` processes against the
SQLite file and against a real PostgreSQL server (tests/peers/postgres.py):
the schema is migrated idempotently and a newer one is refused; accounts,
tokens and the audit log work on both; two nodes sharing one PostgreSQL see
each other's connection changes (LISTEN/NOTIFY); a node whose secret key
differs refuses to start; and the statements PostgreSQL receives during an
SMTP run do not grow with the number of messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from tests.support.helpers import (
    BOTH_STORES, ServerProcess, archived_files, cli, free_port, state_rows, state_url_toml, wait_until, write_config,
)
from tests.support.peers.postgres import PG_BIN, Postgres
from tests.support.peers.require import peer_missing
from tests.support.smtp import SmtpSetup, make_setup, send, session_accepting

from mailpipe.config import load_config
from mailpipe.runtime import open_state_store
from mailpipe.connections.store import MIGRATIONS, StateStoreError

O365 = ["--set", "undeliverable_journal_address=journal-ndr@customer.example"]
SENDER = "journal@contoso.com"
WAIT = 60.0  # bounds only: a broken build fails instead of hanging


def on_postgres(setup: SmtpSetup, url: str) -> SmtpSetup:
    setup.config.write_text(setup.config.read_text() + "\n" + state_url_toml(url))
    return setup


@BOTH_STORES
def test_migrate_is_idempotent_and_reports_the_schema_version(config_path: Path) -> None:
    first = cli(config_path, "state", "migrate", check=True).json
    assert first["schema_version"] == len(MIGRATIONS)
    assert first["migrations_applied"] == len(MIGRATIONS) - first["schema_version_before"]
    again = cli(config_path, "state", "migrate", check=True).json
    assert again["schema_version_before"] == again["schema_version"] == len(MIGRATIONS)
    assert again["migrations_applied"] == 0 and again["state"] == "existing"
    assert state_rows(config_path, "SELECT version FROM schema_version") == [{"version": len(MIGRATIONS)}]


def test_an_sqlite_file_from_before_the_schema_version_table_keeps_its_version(tmp_path: Path) -> None:
    """Older releases kept the version in SQLite's header (PRAGMA user_version)."""
    path = tmp_path / "data" / "mailpipe.db"
    path.parent.mkdir()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for script in MIGRATIONS:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        db.commit()
    migrated = cli(write_config(tmp_path), "state", "migrate", check=True).json
    assert migrated["schema_version_before"] == len(MIGRATIONS) and migrated["migrations_applied"] == 0


@BOTH_STORES
def test_a_schema_newer_than_the_code_is_refused(config_path: Path) -> None:
    cli(config_path, "connections", "add", "smtp_o365", "--description", "x", *O365, check=True)
    store = open_state_store(load_config(config_path))
    store.execute("UPDATE schema_version SET version = ? WHERE id = 1", (len(MIGRATIONS) + 1,))
    store.close()
    for args in (["connections", "list"], ["state", "migrate"], ["serve"]):
        result = cli(config_path, *args)
        assert result.code == 1, (args, result)
        assert f"schema version {len(MIGRATIONS) + 1}, newer than this mailpipe knows" in result.err, result
        assert "upgrade mailpipe" in result.err and "Traceback" not in result.err


@BOTH_STORES
def test_accounts_tokens_and_the_audit_log(config_path: Path, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse battery\n")
    for name, role in (("alice", "admin"), ("bob", "viewer")):
        cli(config_path, "users", "add", name, "--role", role, "--password-file", str(password), check=True)
    token = cli(config_path, "tokens", "create", "--user", "bob", "--name", "script", check=True).json
    listed = cli(config_path, "tokens", "list", "--user", "bob", check=True).json["tokens"]
    assert [(t["id"], t["user"]) for t in listed] == [(token["id"], "bob")]
    assert {u["name"]: u["tokens"] for u in cli(config_path, "users", "list", check=True).json["users"]} == {
        "alice": 0, "bob": 1}
    cli(config_path, "users", "delete", "bob", check=True)
    assert cli(config_path, "tokens", "list", check=True).json["tokens"] == []
    actions = [e["action"] for e in cli(config_path, "audit", "list", check=True).json["entries"]]
    assert actions == ["user.add", "user.add", "token.create", "user.delete"]
    seqs = [e["seq"] for e in cli(config_path, "audit", "list", check=True).json["entries"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


@BOTH_STORES
def test_transactions_run_alone_among_writers(config_path: Path) -> None:
    """Read-check-write in ``transaction`` from two stores (two nodes) and two
    threads each: no update is lost, on PostgreSQL as on SQLite."""
    config = load_config(config_path)
    stores = [open_state_store(config), open_state_store(config)]
    stores[0].set_state("counter", 0)

    def increment(db: Any) -> bool:
        [row] = db.execute("SELECT value FROM state WHERE key = ?", ("counter",)).fetchall()
        time.sleep(0.002)  # widen the window another writer would slip into
        db.execute("UPDATE state SET value = ? WHERE key = ?", (str(int(row["value"]) + 1), "counter"))
        return False

    def work(store: Any) -> None:
        for _ in range(25):
            store.transaction(increment)

    threads = [threading.Thread(target=work, args=(store,)) for store in stores for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert stores[1].get_state("counter") == 100
    finally:
        for store in stores:
            store.close()


def test_state_url_must_be_postgresql(tmp_path: Path) -> None:
    config = tmp_path / "mailpipe.toml"
    config.write_text('[state]\nurl = "mysql://db/mailpipe"\n')
    result = cli(config, "config", "check")
    assert result.code == 1 and "[state] url" in result.err and "postgresql://" in result.err, result


def test_an_unreachable_postgresql_is_explained(tmp_path: Path) -> None:
    config = tmp_path / "mailpipe.toml"
    config.write_text(state_url_toml(f"postgresql://mailpipe:s3cret@127.0.0.1:{free_port()}/mailpipe"))
    result = cli(config, "connections", "list")
    assert result.code == 1 and "cannot reach the state store" in result.err, result
    assert "s3cret" not in result.err and "Traceback" not in result.err


def test_the_pool_size_and_wait_are_the_operators_to_set(tmp_path: Path, postgres_url: str) -> None:
    """[state] pool_size and wait_seconds reach the real pool: with one
    connection in use and a pool of one, the next request fails after the
    configured wait, with a sentence that names the setting."""
    config = tmp_path / "mailpipe.toml"
    config.write_text(state_url_toml(postgres_url) + "pool_size = 1\nwait_seconds = 0.5\n")
    effective = cli(config, "config", "check", check=True).json["effective"]["state"]
    assert (effective["pool_size"], effective["wait_seconds"]) == (1, 0.5)
    store = open_state_store(load_config(config))
    try:
        with store._connection():  # the pool's only connection, busy
            with pytest.raises(StateStoreError, match=r"did not answer within 0.5 s.*\[state\] wait_seconds"):
                store.query("SELECT 1 AS one")
        assert store.query("SELECT 1 AS one") == [{"one": 1}]  # free again
    finally:
        store.close()
    config.write_text(state_url_toml(postgres_url) + "pool_size = 0\n")
    refused = cli(config, "config", "check")
    assert refused.code == 1 and "pool_size" in refused.err, refused


# --- secrets: every node must share the key ------------------------------------------


def test_a_node_with_another_key_refuses_to_start(tmp_path: Path, postgres_url: str) -> None:
    node_a = on_postgres(make_setup(tmp_path / "a"), postgres_url)
    node_b = on_postgres(make_setup(tmp_path / "b"), postgres_url)
    node_a.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    with ServerProcess(node_a.config):  # node A's key is now the store's
        refused = cli(node_b.config, "serve")  # node B made a key of its own
        assert refused.code == 1, refused
        assert "differs from the key that encrypted the secrets stored in postgresql://" in refused.err, refused
        assert "copy secret.key from a node that runs" in refused.err and "Traceback" not in refused.err
        other_key = {"MAILPIPE_SECRET_KEY": Fernet.generate_key().decode()}
        by_env = cli(node_b.config, "serve", env=other_key)
        assert by_env.code == 1 and "secret key (MAILPIPE_SECRET_KEY) differs" in by_env.err, by_env
        # nor may a command on node B write secrets with that key
        imap = cli(node_b.config, "connections", "add", "imap", "--description", "i", "--set", "host=127.0.0.1",
                   "--set", "user=u", "--set", "password=p", env=other_key)
        assert imap.code == 1 and "differs from the key" in imap.err, imap
    shutil.copy(tmp_path / "a" / "data" / "secret.key", tmp_path / "b" / "data" / "secret.key")
    with ServerProcess(node_b.config):  # the same key: it starts
        pass


def test_a_replaced_key_file_refuses_to_start_on_sqlite(config_path: Path) -> None:
    cli(config_path, "connections", "add", "smtp_o365", "--description", "x", *O365, check=True)
    (config_path.parent / "data" / "secret.key").write_bytes(Fernet.generate_key())
    refused = cli(config_path, "serve")
    assert refused.code == 1 and "differs from the key that encrypted" in refused.err, refused


# --- several nodes on one PostgreSQL ----------------------------------------------------


def test_two_nodes_see_each_others_connection_changes(tmp_path: Path, postgres_url: str) -> None:
    shared_key = {"MAILPIPE_SECRET_KEY": Fernet.generate_key().decode()}
    node_a = on_postgres(make_setup(tmp_path / "a"), postgres_url)
    node_b = on_postgres(make_setup(tmp_path / "b"), postgres_url)
    with ServerProcess(node_a.config, env=shared_key), ServerProcess(node_b.config, env=shared_key):
        added = cli(node_a.config, "connections", "add", "smtp_o365", "--description", "on A",
                    "--set", f"undeliverable_journal_address={SENDER}", env=shared_key, check=True).json
        address = added["address"]
        assert session_accepting(node_b, address) is None  # disabled: refused
        cli(node_a.config, "connections", "enable", added["id"], env=shared_key, check=True)
        client = wait_until(lambda: session_accepting(node_b, address), WAIT, 0.1,
                            "node B never accepted the connection enabled through node A")
        code, reply, _ = send(client, SENDER, [address], b"Subject: via B\r\n\r\nbody\r\n")
        client.quit()
        assert code == 250, reply
        assert wait_until(lambda: len(archived_files(node_b.archive)) == 1, WAIT, 0.2)
        cli(node_a.config, "connections", "disable", added["id"], env=shared_key, check=True)
        wait_until(lambda: session_accepting(node_b, address) is None, WAIT, 0.1,
                   "node B still accepts a connection disabled through node A")


def test_a_node_keeps_taking_mail_while_postgresql_is_down(tmp_path: Path) -> None:
    """PostgreSQL stopped under a running node: SMTP intake and archiving go
    on for the connections it knows, changes are refused with the reason;
    once PostgreSQL is back, a change reaches the node (its listener reconnected)."""
    if not (PG_BIN / "postgres").exists():
        peer_missing(f"{PG_BIN}/postgres is not installed (Debian: apt-get install postgresql)")
    private = Postgres()
    try:
        private.start()
        node = on_postgres(make_setup(tmp_path / "node"), private.create_database())
        node.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
        with ServerProcess(node.config) as server:
            private.stop()
            with node.client() as client:
                code, reply, _ = send(client, SENDER, [node.address("o365")], b"Subject: outage\r\n\r\nbody\r\n")
            assert code == 250, reply
            assert wait_until(lambda: len(archived_files(node.archive)) == 1, WAIT, 0.2)
            refused = cli(node.config, "connections", "list")
            assert refused.code == 1 and "cannot reach the state store" in refused.err, refused
            private.start()
            later = cli(node.config, "connections", "add", "smtp_o365", "--description", "after",
                        "--set", f"undeliverable_journal_address={SENDER}", check=True).json
            cli(node.config, "connections", "enable", later["id"], check=True)
            wait_until(lambda: session_accepting(node, later["address"]), WAIT, 0.2,
                       "the node never saw the connection added after PostgreSQL came back")
            assert server.process is not None and server.process.poll() is None
    finally:
        private.close()


# --- per-message work does not reach PostgreSQL ----------------------------------------


def statements_for_run(postgres: Postgres, root: Path, messages: int, clients: int = 4) -> tuple[int, float]:
    """State-store statements PostgreSQL received while one node took ``messages``
    journal reports over SMTP and archived them, and the run's length in seconds."""
    url = postgres.create_database("count")
    setup = on_postgres(make_setup(root), url)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    address = setup.address("o365")
    with ServerProcess(setup.config):
        before = postgres.statements(url)
        started = time.monotonic()
        numbers = iter(range(messages))
        lock = threading.Lock()

        def sender() -> None:
            with setup.client() as client:
                while True:
                    with lock:
                        number = next(numbers, None)
                    if number is None:
                        return
                    body = f"Subject: n {number}\r\nFrom: {SENDER}\r\n\r\nbody {number}\r\n".encode()
                    code, reply, _ = send(client, SENDER, [address], body)
                    assert code == 250, reply

        threads = [threading.Thread(target=sender) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(lambda: len(archived_files(setup.archive)) >= messages, 600, 0.5, "not everything was archived")
        seconds = time.monotonic() - started
    return postgres.statements(url) - before, seconds


#: Statements one live-status flush may send for one connection (BEGIN, the
#: live row, last message, the hour's count, status, pruning, the write
#: counter, COMMIT, a revision bump), with room to spare.
PER_FLUSH = 16
#: Processes that flush live status in this setup: the server and the pipeline process.
FLUSHING_PROCESSES = 2


#: Message counts of the runs; docs/scaling.md's figures add 5000
#: (MAILPIPE_STATEMENT_RUNS=50,500,5000 pytest -s -k statements_do_not_grow).
STATEMENT_RUNS = tuple(int(n) for n in os.environ.get("MAILPIPE_STATEMENT_RUNS", "50,500").split(","))


def test_state_store_statements_do_not_grow_with_messages(tmp_path: Path, postgres: Postgres) -> None:
    for messages in STATEMENT_RUNS:
        statements, seconds = statements_for_run(postgres, tmp_path / str(messages), messages, clients=8)
        # At most one flush per process per second (and one at shutdown),
        # whatever the message count: bounded by seconds, not by messages.
        bound = FLUSHING_PROCESSES * PER_FLUSH * (seconds + 2)
        print(f"{messages} messages: {statements} state-store statements in {seconds:.1f} s")  # pytest -s shows it
        assert statements <= bound, (messages, statements, seconds)
    assert statements < messages, (statements, messages)  # far from one statement per message
