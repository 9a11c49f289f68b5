"""Operator accounts and bearer tokens, for the console and the HTTP API.

Passwords are hashed with argon2id (argon2-cffi: slow on purpose, salted,
parameters in the hash so they can be raised later). Tokens are 256 random
bits shown once; only their SHA-256 is stored: a token is already
unguessable, so a slow hash would only slow every API call. Every change is
recorded in the audit log by this service, whoever calls it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mailpipe.connections.audit import Actor, AuditLog
from mailpipe.errors import MailpipeError, NotFound, ValidationError
from mailpipe.common.timestamps import format_utc, utc_now

ROLES = ("admin", "viewer")
TOKEN_PREFIX = "mpt_"
MIN_PASSWORD_LENGTH = 8
#: A token's ``last_used`` is kept to the minute: at most one state-store
#: write per token a minute, not one per API request (a script polling the
#: API every second would otherwise write the store every second).
LAST_USED_RESOLUTION = timedelta(seconds=60)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()
#: Checked when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


@dataclass(frozen=True)
class Account:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AccountService:
    def __init__(self, store: Any, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = audit or AuditLog(store)

    # --- users --------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT name, role, created, updated FROM users ORDER BY name")
        for row in rows:
            row["tokens"] = len(self.store.query('SELECT id FROM tokens WHERE "user" = ?', (row["name"],)))
        return rows

    def has_users(self) -> bool:
        return bool(self.store.query("SELECT name FROM users LIMIT 1"))

    def user(self, name: str) -> dict[str, Any]:
        found = [u for u in self.users() if u["name"] == name]
        if not found:
            raise NotFound(f"no user named {name!r}; `mailpipe users list` shows them")
        return found[0]

    def add_user(self, name: str, role: str, password: str, actor: Actor) -> dict[str, Any]:
        problems = []
        if not _NAME.match(name):
            problems.append(
                f"name: {name!r} is not a user name; use 1-64 letters, digits, '.', '_', '@' or '-'"
            )
        if role not in ROLES:
            problems.append(f"role: must be admin or viewer, not {role!r}")
        problems += _password_problems(password)
        if problems:
            raise ValidationError(problems)
        if self.store.query("SELECT name FROM users WHERE name = ?", (name,)):
            raise ValidationError([f"name: a user named {name!r} already exists; `mailpipe users passwd` changes the password"])
        now = utc_now()
        self.store.execute(
            "INSERT INTO users (name, role, password_hash, created, updated) VALUES (?,?,?,?,?)",
            (name, role, _HASHER.hash(password), now, now),
        )
        self.audit.record(actor, "user.add", f"user:{name}", after={"name": name, "role": role})
        return self.user(name)

    def set_password(self, name: str, password: str, actor: Actor) -> dict[str, Any]:
        self.user(name)
        problems = _password_problems(password)
        if problems:
            raise ValidationError(problems)
        self.store.execute(
            "UPDATE users SET password_hash = ?, updated = ? WHERE name = ?",
            (_HASHER.hash(password), utc_now(), name),
        )
        self.audit.record(actor, "user.passwd", f"user:{name}", after={"password": "changed"})
        return self.user(name)

    def delete_user(self, name: str, actor: Actor) -> dict[str, Any]:
        """Deletes the user and revokes their tokens; refuses to remove the last admin."""
        before = self.user(name)
        admins = [u for u in self.users() if u["role"] == "admin"]
        if before["role"] == "admin" and len(admins) == 1:
            raise MailpipeError(
                f"{name!r} is the last admin; add another admin first (`mailpipe users add NAME --role admin`)"
            )
        self.store.execute('DELETE FROM tokens WHERE "user" = ?', (name,))
        self.store.execute("DELETE FROM users WHERE name = ?", (name,))
        self.audit.record(actor, "user.delete", f"user:{name}", before={"name": name, "role": before["role"]})
        return before

    def current(self, name: str) -> tuple[Account, str] | None:
        """The account as stored now and when it last changed (a password change
        ends the sessions opened before it); None once deleted."""
        found = self.store.query("SELECT name, role, updated FROM users WHERE name = ?", (name,))
        return (Account(found[0]["name"], found[0]["role"]), found[0]["updated"]) if found else None

    def check_password(self, name: str, password: str) -> Account | None:
        """The account when ``password`` is right; None otherwise (same cost either way)."""
        found = self.store.query("SELECT name, role, password_hash FROM users WHERE name = ?", (name,))
        stored = found[0]["password_hash"] if found else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return Account(found[0]["name"], found[0]["role"]) if found else None

    # --- tokens -------------------------------------------------------------

    def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        sql = 'SELECT id, "user", name, created, last_used AS last_used_at FROM tokens'
        if user:
            return self.store.query(sql + ' WHERE "user" = ? ORDER BY created, id', (user,))
        return self.store.query(sql + " ORDER BY created, id")

    def create_token(self, user: str, name: str, actor: Actor) -> tuple[dict[str, Any], str]:
        """The token's record and the token itself, which is never stored or shown again."""
        self.user(user)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "t" + secrets.token_hex(5)
        self.store.execute(
            'INSERT INTO tokens (id, "user", name, token_hash, created) VALUES (?,?,?,?,?)',
            (token_id, user, name or token_id, hash_token(token), utc_now()),
        )
        record = next(t for t in self.tokens() if t["id"] == token_id)
        self.audit.record(actor, "token.create", f"token:{token_id}", after=record)
        return record, token

    def revoke_token(self, token_id: str, actor: Actor) -> dict[str, Any]:
        found = [t for t in self.tokens() if t["id"] == token_id]
        if not found:
            raise NotFound(f"no token with id {token_id!r}; `mailpipe tokens list` shows them")
        self.store.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        self.audit.record(actor, "token.revoke", f"token:{token_id}", before=found[0])
        return found[0]

    def check_token(self, token: str) -> tuple[Account, dict[str, Any]] | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(token)
        found = self.store.query(
            'SELECT t.id, t.name, t.token_hash, t.last_used, u.name AS "user", u.role FROM tokens t'
            ' JOIN users u ON u.name = t."user" WHERE t.token_hash = ?',
            (digest,),
        )
        if not found or not hmac.compare_digest(found[0]["token_hash"], digest):
            return None
        row = found[0]
        now = datetime.now(timezone.utc)
        if _stale(row["last_used"], now):
            self.store.execute("UPDATE tokens SET last_used = ? WHERE id = ?", (format_utc(now), row["id"]))
        return Account(row["user"], row["role"]), {"id": row["id"], "name": row["name"]}


def _stale(last_used: str | None, now: datetime) -> bool:
    """Is a token's recorded last use older than LAST_USED_RESOLUTION (or absent)?"""
    if not last_used:
        return True
    try:
        recorded = datetime.fromisoformat(last_used.replace("Z", "+00:00"))
    except ValueError:
        return True
    return not timedelta(0) <= now - recorded < LAST_USED_RESOLUTION


def _password_problems(password: str) -> list[str]:
    if len(password) < MIN_PASSWORD_LENGTH:
        return [f"password: must be at least {MIN_PASSWORD_LENGTH} characters"]
    return []
