"""The JSON API under /api/v1/: the CLI's commands over HTTP.

Each route calls the same service (ConnectionService, AccountService,
AuditLog) and the same view functions (mailpipe.connections.views) as the CLI, and
answers with the same object the CLI prints with ``--json`` (``config``,
``data_dir`` and ``state`` included), so a script can move from one to the
other without changes. Errors are ``{"error": sentence}``; validation
errors add ``problems`` (one sentence each) and ``fields`` (the names they
are about). Blocking work (SQLite, archive reads, password hashes) runs in
worker threads so the event loop the SMTP listener shares stays free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from mailpipe.connections.audit import audit_view
from mailpipe.common.timestamps import with_rfc3339
from mailpipe.errors import MailpipeError, NotFound, ValidationError
from mailpipe.http.auth import CSRF_HEADER, SAFE_METHODS, Principal, authenticate, csrf_ok
from mailpipe.runtime import state_context
from mailpipe.connections.secrets import MASK
from mailpipe.spool.queue import QUARANTINE, QUEUE
from mailpipe.connections.views import (
    archive_summary,
    connection_type_view,
    connection_view,
    plugins_view,
    sinks_view,
    spool_view,
)

PREFIX = "/api/v1"
Handler = Callable[[Request, Principal], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    body: dict[str, Any] | None = None
    status: int = 200


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def validation_error(problems: list[str], names: list[str]) -> JSONResponse:
    fields = sorted({name for name in names if any(mentions(p, name) for p in problems)})
    return error(422, "; ".join(problems), problems=problems, fields=fields)


def mentions(problem: str, name: str) -> bool:
    return problem.startswith(f"{name}:") or problem.startswith(f"{name} ") or f"'{name}'" in problem


class Api:
    """The routes, bound to the server's runtime and the console's state."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.runtime = console.runtime

    # --- plumbing ------------------------------------------------------------

    def document(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**with_rfc3339(data), **state_context(self.runtime.config)}

    def answer(self, data: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(self.document(data), status_code=status)

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """401 without credentials, 403 for a viewer's change, 403 without the CSRF token."""

        async def endpoint(request: Request) -> Response:
            principal = await anyio.to_thread.run_sync(
                authenticate, request, self.console.accounts, self.console.sessions
            )
            if principal is None:
                return JSONResponse(
                    {"error": "log in first: send `Authorization: Bearer TOKEN` (see `mailpipe tokens create`) "
                     "or log in at /login"},
                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="mailpipe"'},
                )
            if request.method not in SAFE_METHODS:
                if not principal.account.admin:
                    return error(403, f"{principal.account.name!r} is a viewer; only admins can change things")
                if not csrf_ok(principal, request.headers.get(CSRF_HEADER)):
                    return error(403, "missing or wrong CSRF token: send the page's token in the X-CSRF-Token header")
            try:
                return await handler(request, principal)
            except ValidationError as problem:
                return validation_error(problem.problems, self._field_names(request))
            except NotFound as problem:
                return error(404, str(problem))
            except MailpipeError as problem:
                return error(400, str(problem))

        return endpoint

    def _field_names(self, request: Request) -> list[str]:
        names = ["type", "description", "settings", "ids", "since", "connection"]
        for connection_type in self.runtime.host.connection_types.values():
            names += [s.name for s in connection_type.settings]
        return names

    async def body(self, request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValidationError(["body: not valid JSON; send an object such as {\"settings\": {...}}"]) from None
        if not isinstance(data, dict):
            raise ValidationError(["body: must be a JSON object"])
        return data

    @staticmethod
    def run(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(function, *args)

    # --- connections -----------------------------------------------------------

    async def list_connections(self, request: Request, who: Principal) -> Response:
        service = self.runtime.service
        connections = await self.run(service.list)
        return self.answer({"connections": [connection_view(self.runtime, c) for c in connections]})

    async def get_connection(self, request: Request, who: Principal) -> Response:
        connection = await self.run(self.runtime.service.get, request.path_params["id"])
        return self.answer(connection_view(self.runtime, connection))

    async def add_connection(self, request: Request, who: Principal) -> Response:
        data = await self.body(request)
        problems = []
        type_name, description = data.get("type"), data.get("description")
        settings = data.get("settings", {})
        if not isinstance(type_name, str) or not type_name:
            known = ", ".join(sorted(self.runtime.host.connection_types))
            problems.append(f"type: required, one of {known}")
        if not isinstance(description, str) or not description.strip():
            problems.append("description: required, a text that tells connections apart")
        if not isinstance(settings, dict):
            problems.append("settings: must be an object of setting names and values")
        if problems:
            raise ValidationError(problems)
        connection = await self.runtime.service.add(type_name, description, settings, who.actor)
        return self.answer(connection_view(self.runtime, connection), 201)

    async def edit_connection(self, request: Request, who: Principal) -> Response:
        data = await self.body(request)
        settings = data.get("settings", {})
        description = data.get("description")
        if not isinstance(settings, dict):
            raise ValidationError(["settings: must be an object of setting names and values"])
        if description is not None and (not isinstance(description, str) or not description.strip()):
            raise ValidationError(["description: must be a non-empty text"])
        # A form or script that sends back what it read sends the mask for
        # secrets it did not change: keep the stored value.
        settings = {k: v for k, v in settings.items() if v != MASK}
        connection = await self.runtime.service.edit(request.path_params["id"], settings, description, who.actor)
        return self.answer(connection_view(self.runtime, connection))

    async def enable_connection(self, request: Request, who: Principal) -> Response:
        return await self._set_enabled(request, who, True)

    async def disable_connection(self, request: Request, who: Principal) -> Response:
        return await self._set_enabled(request, who, False)

    async def _set_enabled(self, request: Request, who: Principal, enabled: bool) -> Response:
        connection = await self.run(self.runtime.service.set_enabled, request.path_params["id"], enabled, who.actor)
        return self.answer(connection_view(self.runtime, connection))

    async def test_connection(self, request: Request, who: Principal) -> Response:
        """202 with status "testing"; the result lands in the connection's status."""
        testing = await self.console.start_test(request.path_params["id"], who.actor)
        return self.answer(connection_view(self.runtime, testing), 202)

    async def delete_connection(self, request: Request, who: Principal) -> Response:
        service = self.runtime.service
        connection = await self.run(service.get, request.path_params["id"])
        data = {**connection_view(self.runtime, connection), "deleted": True}
        await self.run(service.delete, connection.id, who.actor)
        return self.answer(data)

    # --- reference --------------------------------------------------------------

    async def connection_types(self, request: Request, who: Principal) -> Response:
        types = sorted(self.runtime.host.connection_types.values(), key=lambda t: t.name)
        return self.answer({"connection_types": [connection_type_view(t) for t in types]})

    async def plugins(self, request: Request, who: Principal) -> Response:
        return self.answer(plugins_view(self.runtime.host))

    async def sinks(self, request: Request, who: Principal) -> Response:
        return self.answer(sinks_view(self.runtime.config))

    # --- spool and quarantine ------------------------------------------------------

    async def spool(self, request: Request, who: Principal) -> Response:
        return self.answer(await self.run(spool_view, self.runtime, QUEUE))

    async def quarantine(self, request: Request, who: Principal) -> Response:
        return self.answer(await self.run(spool_view, self.runtime, QUARANTINE))

    async def retry(self, request: Request, who: Principal) -> Response:
        from mailpipe.pipeline.delivery import retry_quarantined

        data = await self.body(request) if await request.body() else {}
        ids = data.get("ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise ValidationError(["ids: must be a list of spool ids (or left out for all)"])
        try:
            moved = await self.run(retry_quarantined, self.runtime.spool, ids or None)
        except KeyError as missing:
            raise NotFound(f"no quarantined message with spool id {missing.args[0]!r}") from None
        return self.answer({"retried": moved})

    # --- archive -------------------------------------------------------------------

    def _archives(self) -> list[Any]:
        archives = [slot.sink for slot in self.console.sinks() if hasattr(slot.sink, "entries")]
        if not archives:
            raise MailpipeError("no configured sink can be listed here; the archive routes read filesystem sinks")
        return archives

    async def archive_list(self, request: Request, who: Principal) -> Response:
        def read() -> list[dict[str, Any]]:
            return [archive_summary(e) for sink in self._archives() for e in sink.entries()]

        return self.answer({"messages": await self.run(read)})

    def _one_entry(self, wanted: str) -> Any:
        found = [e for sink in self._archives() for e in sink.find(wanted)]
        if not found:
            raise NotFound(f"no archived message matches {wanted!r}; GET {PREFIX}/archive lists the ids")
        if len(found) > 1:
            raise MailpipeError(f"{wanted!r} matches {len(found)} archived messages; give more of the id")
        return found[0]

    async def archive_show(self, request: Request, who: Principal) -> Response:
        entry = await self.run(self._one_entry, request.path_params["id"])
        return self.answer({**archive_summary(entry), "metadata": entry.metadata})

    async def archive_raw(self, request: Request, who: Principal) -> Response:
        entry = await self.run(self._one_entry, request.path_params["id"])
        name = str(entry.metadata.get("sha256") or "message")[:16] + ".eml"
        return FileResponse(entry.eml_path, media_type="message/rfc822", filename=name)

    # --- audit ------------------------------------------------------------------------

    async def audit(self, request: Request, who: Principal) -> Response:
        data = await self.run(
            audit_view, self.runtime.store, request.query_params.get("connection"), request.query_params.get("since")
        )
        return self.answer(data)

    async def whoami(self, request: Request, who: Principal) -> Response:
        return JSONResponse({
            "name": who.account.name, "role": who.account.role,
            "csrf_token": who.session.csrf if who.session else None,
        })

    # --- the table -------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        connection_body = {
            "type": "object", "required": ["type", "description"],
            "properties": {"type": {"type": "string"}, "description": {"type": "string"},
                           "settings": {"type": "object"}},
        }
        edit_body = {"type": "object", "properties": {"description": {"type": "string"},
                                                      "settings": {"type": "object"}}}
        one = f"{PREFIX}/connections/{{id}}"
        return [
            Endpoint("GET", f"{PREFIX}/connections", self.list_connections, "List connections (as `connections list --json`)"),
            Endpoint("POST", f"{PREFIX}/connections", self.add_connection,
                     "Add a connection; the answer has its unique address", connection_body, 201),
            Endpoint("GET", one, self.get_connection, "One connection (as `connections show ID --json`)"),
            Endpoint("PATCH", one, self.edit_connection, "Change settings or description (re-validated; status → untested)",
                     edit_body),
            Endpoint("DELETE", one, self.delete_connection, "Delete a connection (its archived mail stays)"),
            Endpoint("POST", f"{one}/enable", self.enable_connection, "Start receiving or collecting"),
            Endpoint("POST", f"{one}/disable", self.disable_connection, "Stop receiving or collecting"),
            Endpoint("POST", f"{one}/test", self.test_connection,
                     "Start a test: 202, status testing, then ok or failed (poll GET)", status=202),
            Endpoint("GET", f"{PREFIX}/connection-types", self.connection_types,
                     "Connection types and their settings schema (what the add form is built from)"),
            Endpoint("GET", f"{PREFIX}/plugins", self.plugins, "Installed plugins (as `plugins --json`)"),
            Endpoint("GET", f"{PREFIX}/sinks", self.sinks, "Configured sinks (as `sinks list --json`)"),
            Endpoint("GET", f"{PREFIX}/spool", self.spool, "Queued messages (as `spool list --json`)"),
            Endpoint("GET", f"{PREFIX}/quarantine", self.quarantine,
                     "Quarantined messages (as `spool list --quarantine --json`)"),
            Endpoint("POST", f"{PREFIX}/quarantine/retry", self.retry,
                     "Move quarantined messages (ids, or all) back to the queue",
                     {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}}}}),
            Endpoint("GET", f"{PREFIX}/archive", self.archive_list, "Archived messages (as `archive list --json`)"),
            Endpoint("GET", f"{PREFIX}/archive/{{id:path}}/raw", self.archive_raw, "The archived message as .eml"),
            Endpoint("GET", f"{PREFIX}/archive/{{id:path}}", self.archive_show,
                     "One archived message's metadata (as `archive show ID --json`)"),
            Endpoint("GET", f"{PREFIX}/audit", self.audit,
                     "The audit log (query: connection, since) (as `audit list --json`)"),
            Endpoint("GET", f"{PREFIX}/me", self.whoami, "Who is logged in, and the session's CSRF token"),
        ]

    def routes(self) -> list[Route]:
        routes = [Route(e.path, self.guarded(e.handler), methods=[e.method]) for e in self.endpoints()]
        routes.append(Route(f"{PREFIX}/openapi.json", self.openapi, methods=["GET"]))
        return routes

    async def openapi(self, request: Request) -> Response:
        """The API's description (readable without logging in: it holds no data)."""
        from mailpipe import __version__

        paths: dict[str, Any] = {}
        for endpoint in self.endpoints():
            path = endpoint.path.replace("{id:path}", "{id}")
            operation: dict[str, Any] = {
                "summary": endpoint.summary,
                "responses": {
                    str(endpoint.status): {"description": "the same object as the CLI's --json"},
                    "401": {"description": "not logged in"},
                    **({"403": {"description": "a viewer, or a cookie session without the CSRF token"},
                        "422": {"description": "validation failed; `fields` names the fields"}}
                       if endpoint.method not in SAFE_METHODS else {}),
                },
            }
            if "{id" in endpoint.path:
                operation["parameters"] = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
            if endpoint.body:
                operation["requestBody"] = {"content": {"application/json": {"schema": endpoint.body}}}
            paths.setdefault(path, {})[endpoint.method.lower()] = operation
        return JSONResponse({
            "openapi": "3.0.3",
            "info": {"title": "mailpipe API", "version": __version__},
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mailpipe_session"},
            }},
            "security": [{"bearer": []}, {"session": []}],
            "paths": paths,
        })


