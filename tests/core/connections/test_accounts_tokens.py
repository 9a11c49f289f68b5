"""A token's last use is recorded, but not with a state-store write on every
API request (mailpipe.connections.accounts.LAST_USED_RESOLUTION)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mailpipe.common.timestamps import format_utc
from mailpipe.connections.accounts import LAST_USED_RESOLUTION, AccountService
from mailpipe.connections.audit import SYSTEM
from mailpipe.connections.store import SQLiteStore


class CountingStore:
    """The real SQLite store, counting the writes to ``tokens.last_used``."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.last_used_writes = 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith("UPDATE tokens SET last_used"):
            self.last_used_writes += 1
        return self.store.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_last_used_is_written_once_a_minute_at_most(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    store.migrate()
    try:
        counting = CountingStore(store)
        accounts = AccountService(counting)
        accounts.add_user("alice", "admin", "a long password", SYSTEM)
        record, token = accounts.create_token("alice", "script", SYSTEM)
        assert record["last_used_at"] is None

        for _ in range(20):  # a script polling the API
            found = accounts.check_token(token)
            assert found is not None and found[0].name == "alice"
        assert counting.last_used_writes == 1
        first = accounts.tokens()[0]["last_used_at"]
        assert first is not None

        # Recorded more than a minute ago: the next use writes again.
        earlier = format_utc(datetime.now(timezone.utc) - LAST_USED_RESOLUTION - timedelta(seconds=1))
        store.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (earlier, record["id"]))
        assert accounts.check_token(token) is not None
        assert counting.last_used_writes == 2
        assert accounts.tokens()[0]["last_used_at"] > earlier

        assert accounts.check_token(token + "x") is None  # a wrong token writes nothing
        assert counting.last_used_writes == 2
    finally:
        store.close()
