"""The console's ASGI app and its place in ``mailpipe serve``.

Starlette routes served by uvicorn inside the server's own event loop (a
task in the server's task group, like the SMTP listener): no second
process, and the API sees the same runtime the server uses. The listening
socket is bound here first so a port in use is one sentence for the
operator, not uvicorn's exit.

Open without logging in: /healthz, /readyz, /metrics, the login page and
the OpenAPI description (it holds no data). Everything else needs a session
or a bearer token (mailpipe.http.auth).
"""

from __future__ import annotations

import contextlib
import html
import logging
import socket
from typing import Any, Awaitable, Callable, Iterator

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mailpipe.connections.accounts import AccountService
from mailpipe.connections.audit import Actor
from mailpipe.errors import ConfigError, NotFound
from mailpipe.http.api import Api
from mailpipe.http.auth import SESSION_COOKIE, LoginLimiter, Sessions, remote_of
from mailpipe.http.page import Page, document
from mailpipe.connections.metrics import render
from mailpipe.types import Connection

log = logging.getLogger("mailpipe.http")

READY_TIMEOUT_SECONDS = 10.0
STARTUP_TIMEOUT_SECONDS = 30.0


class Console:
    """What the routes share: the runtime, accounts, sessions, login limits."""

    def __init__(self, runtime: Any, group: TaskGroup | None = None) -> None:
        self.runtime = runtime
        self.accounts = AccountService(runtime.store)
        self.sessions = Sessions(lifetime=runtime.config.http.session_hours * 3600)
        self.limiter = LoginLimiter()
        self.tls = bool(runtime.config.http.tls_cert)
        self.group = group
        self._sinks: list[Any] | None = None

    def sinks(self) -> list[Any]:
        if self._sinks is None:
            self._sinks = self.runtime.build_sinks()
        return self._sinks

    def start_background(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self.group is not None, "the console runs inside serve's task group"
        self.group.start_soon(function, *args)

    async def start_test(self, connection_id: str, actor: Actor) -> Connection:
        """Status → testing now; the test runs on in the server (API and page alike)."""
        testing = await anyio.to_thread.run_sync(self.runtime.service.begin_test, connection_id, actor)
        self.start_background(self._finish_test, testing, actor)
        return testing

    async def _finish_test(self, testing: Connection, actor: Actor) -> None:
        try:
            await self.runtime.service.finish_test(testing, actor)
        except NotFound:
            pass  # deleted while testing

    # --- open routes ---------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        problems = await self.readiness_problems()
        if problems:
            return JSONResponse({"ok": False, "error": "; ".join(problems), "problems": problems}, status_code=503)
        return JSONResponse({"ok": True})

    async def readiness_problems(self) -> list[str]:
        problems = []
        spool_dir = self.runtime.config.spool_dir

        def probe_spool() -> None:
            probe = spool_dir / ".readyz-probe"
            probe.write_bytes(b"ok")
            probe.unlink()

        try:
            await anyio.to_thread.run_sync(probe_spool)
        except OSError as error:
            problems.append(f"spool {spool_dir} is not writable: {error.strerror or error}")
        try:
            await anyio.to_thread.run_sync(self.runtime.store.revision)
        except Exception as error:  # any failure means not ready; the reason is reported
            problems.append(f"state store unreachable: {error}")
        for slot in await anyio.to_thread.run_sync(self.sinks):
            if not slot.required:
                continue
            try:
                with anyio.fail_after(READY_TIMEOUT_SECONDS):
                    result = await slot.sink.test()
                if not result.ok:
                    problems.append(f"required sink {slot.name!r}: {result.error}")
            except TimeoutError:
                problems.append(f"required sink {slot.name!r} did not answer within {READY_TIMEOUT_SECONDS:.0f} s")
            except Exception as error:  # a sink bug still reads as not ready, with the reason
                problems.append(f"required sink {slot.name!r}: {error}")
        return problems

    async def metrics(self, request: Request) -> Response:
        body, content_type = await anyio.to_thread.run_sync(render, self.runtime)
        return Response(body, media_type=content_type.split(";")[0], headers={"Content-Type": content_type})

    # --- login ---------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        return HTMLResponse(login_html())

    async def login(self, request: Request) -> Response:
        form = await request.form()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        remote = remote_of(request)
        wait = self.limiter.retry_after(remote, user)
        if wait > 0:
            return HTMLResponse(login_html("Too many failed logins; try again in a minute."), status_code=429,
                                headers={"Retry-After": str(max(1, int(wait) + 1))})
        account = await anyio.to_thread.run_sync(self.accounts.check_password, user, password)
        if account is None:
            self.limiter.failed(remote, user)
            log.warning("failed console login", extra={"user": user, "remote": remote})
            return HTMLResponse(login_html("Wrong user name or password."), status_code=401)
        session_id, _session = self.sessions.create(account)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", secure=self.tls,
                            max_age=int(self.sessions.lifetime), path="/")
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def app(self) -> Starlette:
        api = Api(self)
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            *Page(self).routes(),
            *api.routes(),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            return JSONResponse({"error": f"no such route: {request.method} {request.url.path}"}, status_code=404)

        async def not_allowed(request: Request, exc: Exception) -> Response:
            return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405)

        async def crashed(request: Request, exc: Exception) -> Response:
            log.error("console request failed", extra={"path": request.url.path, "error": repr(exc)})
            return JSONResponse({"error": "mailpipe could not answer this request (a bug); the server log "
                                 "has the details"}, status_code=500)

        return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed, 500: crashed})


def login_html(message: str = "") -> str:
    shown = f'<p class=error role=alert>{html.escape(message)}</p>' if message else ""
    return document("Log in", "<h1>mailpipe</h1>" + shown + (
        '<form method=post action="/login">'
        '<label>User name <input name=username autocomplete=username required autofocus></label>'
        '<label>Password <input name=password type=password autocomplete=current-password required></label>'
        "<button type=submit>Log in</button></form>"
    ))


class _EmbeddedServer:
    """uvicorn's Server without its signal handling: ``serve`` owns SIGTERM/SIGINT."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Embedded(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

            def install_signal_handlers(self) -> None:  # older uvicorn
                pass

        return Embedded(config)


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"[http] listen {listen}: cannot listen there ({error.strerror or error}); "
            "choose another address or port, or set listen = \"\" to turn the console off"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_http(runtime: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve the console until cancelled."""
    import uvicorn

    settings = runtime.config.http
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # mailpipe logs the start itself
    sock = bind(settings.listen)
    async with anyio.create_task_group() as group:
        console = Console(runtime, group)
        config = uvicorn.Config(
            console.app(), log_config=None, access_log=False, lifespan="off", loop="none", ws="none",
            ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key, server_header=False,
        )
        try:
            config.load()  # reads the TLS key and certificate: a bad one fails here, with its reason
        except (OSError, ValueError) as error:
            sock.close()
            raise ConfigError(f"[http] tls_cert/tls_key cannot be used: {error}") from None
        server = _EmbeddedServer(config)
        group.start_soon(server.serve, [sock])
        with anyio.fail_after(STARTUP_TIMEOUT_SECONDS):
            while not server.started:
                await anyio.sleep(0.02)
        scheme = "https" if settings.tls_cert else "http"
        log.info("console listening", extra={"url": f"{scheme}://{settings.listen}/"})
        if not await anyio.to_thread.run_sync(console.accounts.has_users):
            log.warning(
                "no console user exists yet; create one with `mailpipe users add NAME --role admin` "
                "(then log in at the console, or create a token with `mailpipe tokens create --user NAME`)"
            )
        task_status.started()
