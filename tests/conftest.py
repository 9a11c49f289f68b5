"""Shared fixtures. Real peers (Dovecot, an S3 API server) come from tests/support/peers (the one support package: tests.support)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import state_url_toml, write_config

from tests.support.example_plugin import example_installed  # noqa: F401  (session fixture)
from tests.support.peers.fixtures import *  # noqa: F401,F403,E402  (dovecot, moto_s3, certs, ...)


@pytest.fixture
def config_path(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A config in a fresh directory: data in tmp/data, archive in tmp/archive.

    The state store is the SQLite file in data; a test marked
    ``@helpers.BOTH_STORES`` runs once with it and once with a fresh
    PostgreSQL database (``[state] url``)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return write_config(tmp_path, extra=state_url_toml(request.getfixturevalue("postgres_url")))
    return write_config(tmp_path)


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write message bytes to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(data: bytes) -> Path:
        path = tmp_path / f"message-{next(counter)}.eml"
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Core tests marked ``@pytest.mark.anyio`` run on both backends."""
    return str(request.param)


@pytest.fixture(autouse=True)
def restore_umask() -> Iterator[None]:
    """Opening a Runtime in the test process sets mailpipe's private umask
    (077, mailpipe.common.permissions), as the CLI and the server do for themselves;
    peers started later in this process (a session's Dovecot writing its
    passwd files) must not inherit it."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)
