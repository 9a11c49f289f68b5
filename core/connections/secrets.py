"""Secrets (passwords) encrypted at rest.

The key is ``MAILPIPE_SECRET_KEY`` (a Fernet key) when set — for deployments
that keep keys in a secret manager — else ``<data_dir>/secret.key``, created
with mode 0600 on first use. Values are stored as ``enc:v1:<token>``.

Nodes sharing one state store (PostgreSQL) must share the key too. The
first node to start records a check value encrypted with its key
(``KEY_CHECK_STATE``); a node whose key cannot decrypt it, or an encrypted
setting stored before the check value existed, refuses to start
(``verify_shared_key``) instead of writing secrets the others cannot read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from mailpipe.errors import SecretKeyError

PREFIX = "enc:v1:"
MASK = "********"
KEY_ENV = "MAILPIPE_SECRET_KEY"
#: State key of the value every node's key must decrypt.
KEY_CHECK_STATE = "secret_key_check"
_KEY_CHECK_TEXT = "mailpipe secret key check"


class SecretBox:
    def __init__(self, key: bytes, source: str = "the secret key") -> None:
        self.source = source  # where the key came from, for messages
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise SecretKeyError(
                "the secret key is not a valid Fernet key; generate one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`"
            ) from None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "SecretBox":
        from_env = os.environ.get(KEY_ENV)
        if from_env:
            return cls(from_env.encode(), KEY_ENV)
        key_file = data_dir / "secret.key"
        if not key_file.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(Fernet.generate_key())
                handle.flush()
                os.fsync(handle.fileno())
        return cls(key_file.read_bytes().strip(), str(key_file))

    def encrypt(self, value: str) -> str:
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret cannot be decrypted with the current key; "
                f"restore the data dir's secret.key or the {KEY_ENV} it was written with"
            ) from None


def verify_shared_key(box: SecretBox, store: Any, record: bool = True) -> None:
    """Refuse a key that cannot decrypt what the state store holds. With
    ``record`` (``serve`` and the commands that create state), the first
    node records the check value: first writer wins, so two nodes starting
    at once with different keys cannot both pass."""
    if store.get_state(KEY_CHECK_STATE) is None:
        samples = [value for row in store.list() for value in row.settings.values()
                   if isinstance(value, str) and value.startswith(PREFIX)][:1]
        _decrypts_all(box, store, samples)
        if not record:
            return
        store.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
            (KEY_CHECK_STATE, json.dumps(box.encrypt(_KEY_CHECK_TEXT))),
        )
    _decrypts_all(box, store, [store.get_state(KEY_CHECK_STATE)])


def _decrypts_all(box: SecretBox, store: Any, samples: list[str]) -> None:
    for sample in samples:
        try:
            box.decrypt(sample)
        except SecretKeyError:
            raise SecretKeyError(
                f"this node's secret key ({box.source}) differs from the key that encrypted the secrets "
                f"stored in {store.location}; every node must use the same key: copy secret.key from a "
                f"node that runs (or set {KEY_ENV} to its value) and start again"
            ) from None
