"""Secrets are encrypted at rest and masked in every output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support.helpers import BOTH_STORES, state_rows
from mailpipe import hookimpl
from mailpipe.config import load_config
from mailpipe.connections.service import ConnectionService
from mailpipe.errors import SecretKeyError
from mailpipe.plugin_host import PluginHost
from mailpipe.connections.secrets import MASK, SecretBox
from mailpipe.runtime import open_state_store
from mailpipe.types import CollectContext, Connection, ConnectionType, Setting

pytestmark = pytest.mark.anyio
PASSWORD = "correct horse battery staple"


async def _collect_nothing(connection: Connection, context: CollectContext) -> None:
    return None


class VaultType:
    @hookimpl
    def mailpipe_connection_types(self) -> list[ConnectionType]:
        return [ConnectionType("vault", "test type", (Setting("user"), Setting("password", "secret", required=True)),
                               collect=_collect_nothing)]


_opened: list[Any] = []


@pytest.fixture(autouse=True)
def close_stores() -> Iterator[None]:
    """The stores service_for opened are closed after each test (a PostgreSQL pool has threads)."""
    yield
    while _opened:
        _opened.pop().close()


def service_for(config_path: Path) -> ConnectionService:
    config = load_config(config_path)
    host = PluginHost()
    host.register(VaultType(), "vault")
    host.collect_registrations()
    store = open_state_store(config)
    _opened.append(store)
    return ConnectionService(config, host, store, SecretBox.for_data_dir(config.data_dir))


@BOTH_STORES
async def test_password_is_encrypted_at_rest_and_masked(config_path: Path) -> None:
    service = service_for(config_path)
    connection = await service.add("vault", "v", {"user": "u", "password": PASSWORD})
    assert connection.settings["password"] == PASSWORD  # plugins get the real value
    assert service.public(connection)["settings"] == {"user": "u", "password": MASK}
    data_dir = config_path.parent / "data"
    [row] = state_rows(config_path, "SELECT settings FROM connections")
    raw = row["settings"]
    assert PASSWORD not in raw and "enc:v1:" in raw
    for file in data_dir.rglob("*"):
        if file.is_file():
            assert PASSWORD.encode() not in file.read_bytes(), file
    key_file = data_dir / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # an edit that does not touch the password keeps it
    edited = await service.edit(connection.id, {"user": "v"})
    assert edited.settings["password"] == PASSWORD


@BOTH_STORES
async def test_key_from_environment(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILPIPE_SECRET_KEY", Fernet.generate_key().decode())
    service = service_for(config_path)
    connection = await service.add("vault", "v", {"password": PASSWORD})
    assert not (config_path.parent / "data" / "secret.key").exists()
    assert service.get(connection.id).settings["password"] == PASSWORD
    monkeypatch.setenv("MAILPIPE_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(SecretKeyError, match="cannot be decrypted with the current key"):
        service_for(config_path).get(connection.id)


def test_bad_key_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILPIPE_SECRET_KEY", "not-a-key")
    with pytest.raises(SecretKeyError, match="not a valid Fernet key"):
        SecretBox.for_data_dir(tmp_path)
