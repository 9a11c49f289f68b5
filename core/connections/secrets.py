"""Secrets (passwords) encrypted at rest.

The key is ``MAILPIPE_SECRET_KEY`` (a Fernet key) when set — for deployments
that keep keys in a secret manager — else ``<data_dir>/secret.key``, created
with mode 0600 on first use. Values are stored as ``enc:v1:<token>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from mailpipe.errors import SecretKeyError

PREFIX = "enc:v1:"
MASK = "********"
KEY_ENV = "MAILPIPE_SECRET_KEY"


class SecretBox:
    def __init__(self, key: bytes) -> None:
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
            return cls(from_env.encode())
        key_file = data_dir / "secret.key"
        if not key_file.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(Fernet.generate_key())
                handle.flush()
                os.fsync(handle.fileno())
        return cls(key_file.read_bytes().strip())

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
