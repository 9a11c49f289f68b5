"""Who is asking: bearer tokens, session cookies, CSRF, login rate limits.

- Scripts send ``Authorization: Bearer mpt_...`` (``mailpipe tokens create``).
- The page logs in with a form (POST /login) and gets a session cookie:
  HttpOnly, SameSite=Strict, Secure when the console is served over TLS.
  Sessions live in the server's memory (a restart logs everyone out; there
  is one server per state store in the embedded setup).
- A state-changing request made with the cookie must carry the session's
  CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``): SameSite
  already stops other sites; the token also covers old browsers and
  same-site subdomains. Bearer requests need none (no ambient credential).
- A session ends when its account is deleted or its password changes.
- Failed logins are limited per remote address and per user name:
  ``LOGIN_LIMIT`` failures within ``LOGIN_WINDOW`` seconds → 429 until the
  oldest failure leaves the window.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.requests import Request

from mailpipe.connections.accounts import Account, AccountService
from mailpipe.connections.audit import Actor
from mailpipe.common.timestamps import utc_now

SESSION_COOKIE = "mailpipe_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
LOGIN_LIMIT = 5
LOGIN_WINDOW = 60.0
MAX_TRACKED = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Session:
    account: Account
    csrf: str
    expires: float
    issued: str = field(default_factory=utc_now)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and how it authenticated."""

    account: Account
    actor: Actor
    session: Session | None = None  # None for a bearer token


class Sessions:
    """Open sessions, in memory; used from the event loop and worker threads, hence the lock."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, account: Account) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(account, secrets.token_urlsafe(32), time.monotonic() + self.lifetime)
        with self._lock:
            now = time.monotonic()
            for key in [k for k, s in self._by_id.items() if s.expires < now]:
                del self._by_id[key]
            self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        with self._lock:
            session = self._by_id.get(session_id or "")
        if session is None or session.expires < time.monotonic():
            return None
        return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)


@dataclass
class LoginLimiter:
    limit: int = LOGIN_LIMIT
    window: float = LOGIN_WINDOW
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, remote: str, user: str) -> float:
        """Seconds until a login from ``remote`` for ``user`` is allowed again (0: now)."""
        now = time.monotonic()
        waits = [0.0]
        for key in (f"addr:{remote}", f"user:{user.lower()}"):
            recent = self.failures.get(key)
            if not recent:
                continue
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if len(recent) >= self.limit:
                waits.append(recent[0] + self.window - now)
        return max(waits)

    def failed(self, remote: str, user: str) -> None:
        now = time.monotonic()
        if len(self.failures) > MAX_TRACKED:  # many names or addresses: forget the stale ones
            for key in [k for k, d in self.failures.items() if not d or d[-1] <= now - self.window]:
                del self.failures[key]
        for key in (f"addr:{remote}", f"user:{user.lower()}"):
            self.failures.setdefault(key, deque()).append(now)


def remote_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate(request: Request, accounts: AccountService, sessions: Sessions) -> Principal | None:
    remote = remote_of(request)
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        found = accounts.check_token(credential.strip())
        if found is None:
            return None
        account, token = found
        return Principal(account, Actor(f"{account.name} (token {token['id']})", remote))
    session = sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    # A deleted account, or one whose password changed since the login, is out.
    current = accounts.current(session.account.name)
    if current is None or current[1] > session.issued:
        sessions.end(request.cookies.get(SESSION_COOKIE))
        return None
    return Principal(current[0], Actor(session.account.name, remote), session)


def csrf_ok(principal: Principal, presented: str | None) -> bool:
    if principal.session is None:
        return True
    return bool(presented) and hmac.compare_digest(presented or "", principal.session.csrf)
