"""The Connections page: plain server-rendered HTML, forms, almost no JavaScript.

It mirrors the seed's screen: a list (description, type, unique address
with a copy button, enable switch, status icon with the error on hover,
test / edit / delete), an add form whose fields follow the chosen type's
settings schema, a Next step showing the unique address, an edit form that
re-validates and reminds to test pull connections, and a delete
confirmation page (works without JavaScript). Every form carries the
session's CSRF token; viewers see no forms and get 403 on a POST. The page
calls the same service and views as the API and the CLI.
"""

from __future__ import annotations

import html
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mailpipe.errors import MailpipeError, NotFound, ValidationError
from mailpipe.http.auth import CSRF_FIELD, Principal, authenticate, csrf_ok
from mailpipe.connections.live_progress import progress_text
from mailpipe.connections.secrets import MASK
from mailpipe.types import ConnectionType, Setting
from mailpipe.connections.views import connection_view

SETTING_PREFIX = "setting."
STATUS_LABELS = {"untested": "untested", "testing": "testing…", "ok": "ok", "failed": "failed"}

STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:64rem;padding:0 1rem;line-height:1.4}
table{border-collapse:collapse;width:100%}td:first-child{white-space:nowrap}td,th{padding:.4rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
form.inline{display:inline}button,select,input{font-size:1rem}label{display:block;margin:.6rem 0 .2rem}
input,select{padding:.3rem;max-width:100%}.error{color:#a00}.notice{background:#eef;padding:.5rem}
.status{display:inline-block;width:.9rem;height:.9rem;border-radius:50%;vertical-align:middle;margin-right:.3rem}
.untested{background:#999}.ok{background:#1a7f37}.failed{background:#c62828}
.testing{border:3px solid #ccc;border-top-color:#333;width:.6rem;height:.6rem;animation:spin 1s linear infinite}
@keyframes spin{to{transform:rotate(360deg)}}code{word-break:break-all}
button[role=switch][aria-checked=true]{background:#1a7f37;color:#fff}
@media (max-width:40rem){thead{display:none}td{display:block;border:0;padding:.2rem}tr{display:block;border-bottom:1px solid #ccc;padding:.5rem 0}td.progress:empty{display:none}}
"""


#: Shows the fields that apply to the value chosen in the select they depend on
#: (e.g. the OAuth fields once auth = oauth2 is chosen), without a reload.
SHOW_APPLICABLE_SCRIPT = """<script>
(function () {
  function update() {
    document.querySelectorAll("div.applies").forEach(function (div) {
      var select = document.getElementById("f-" + div.dataset.setting);
      div.hidden = !select || (select.value || div.dataset.default) !== div.dataset.value;
      // a field that does not apply is not sent either
      div.querySelectorAll("input, select").forEach(function (i) { i.disabled = div.hidden; });
    });
  }
  document.querySelectorAll("select").forEach(function (s) { s.addEventListener("change", update); });
  update();
})();
</script>"""


def esc(value: Any) -> str:
    return html.escape(str(value if value is not None else ""), quote=True)


def keep_parts_whole(text: str) -> str:
    """"1,234 left · 350/s · 4 s left" wraps only between its parts in a narrow column."""
    return " · ".join(part.replace(" ", "\u00a0") for part in text.split(" · "))


def document(title: str, body: str, refresh: bool = False) -> str:
    # An explicit URL: after Test the browser is on "/#id", and a bare refresh of a
    # URL with a fragment is a same-document navigation in Chromium (never re-fetched).
    meta = '<meta http-equiv="refresh" content="2; url=/">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
        f"<title>{esc(title)} — mailpipe</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


class Page:
    def __init__(self, console: Any) -> None:
        self.console = console
        self.runtime = console.runtime

    # --- plumbing -------------------------------------------------------------

    async def who(self, request: Request) -> Principal | None:
        return await anyio.to_thread.run_sync(authenticate, request, self.console.accounts, self.console.sessions)

    def header(self, who: Principal) -> str:
        csrf = self.csrf_field(who)
        return (
            f'<header><strong>mailpipe</strong> · <a href="/">Connections</a> · {esc(who.account.name)} '
            f'({esc(who.account.role)}) <form class="inline" method="post" action="/logout">{csrf}'
            '<button>Log out</button></form></header>'
        )

    @staticmethod
    def csrf_field(who: Principal) -> str:
        token = who.session.csrf if who.session else ""
        return f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(token)}">'

    async def change(self, request: Request) -> tuple[Principal | None, Any, Response | None]:
        """The principal and form of a POST, or the response refusing it."""
        who = await self.who(request)
        if who is None:
            return None, None, RedirectResponse("/login", status_code=303)
        form = await request.form()
        if not who.account.admin:
            return who, form, HTMLResponse(document("Not allowed", "<p>Viewers cannot change anything.</p>"), 403)
        if not csrf_ok(who, str(form.get(CSRF_FIELD, ""))):
            return who, form, HTMLResponse(document("Refused", "<p>The form's CSRF token is missing or wrong; "
                                                    "reload the page and try again.</p>"), 403)
        return who, form, None

    async def viewing(self, request: Request) -> tuple[Principal | None, Any, Response | None]:
        """The principal and the connection a GET is about, or the response instead."""
        who = await self.who(request)
        if who is None:
            return None, None, RedirectResponse("/login", status_code=303)
        try:
            connection = await anyio.to_thread.run_sync(self.runtime.service.get, request.path_params["id"])
        except NotFound as missing:
            return who, None, HTMLResponse(document("Not found", f"<p>{esc(missing)}</p>"), 404)
        return who, connection, None

    # --- the list ----------------------------------------------------------------

    async def connections(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        rows = await anyio.to_thread.run_sync(
            lambda: [connection_view(self.runtime, c) for c in self.runtime.service.list()])
        notice = request.query_params.get("notice", "")
        body = [self.header(who), "<h1>Connections</h1>"]
        if notice:
            body.append(f'<p class="notice" role="status">{esc(notice)}</p>')
        if who.account.admin:
            body.append('<p><a href="/connections/new">Add connection</a></p>')
        body.append("<table><thead><tr><th>Status</th><th>Description</th><th>Type</th><th>Address</th>"
                    "<th>Last message</th><th>Archived 24 h</th><th>Left on server</th><th>Collected by</th><th>Enabled</th>"
                    "<th>Actions</th></tr></thead><tbody>")
        for row in rows:
            body.append(self.row(who, row))
        body.append("</tbody></table>")
        if not rows:
            body.append("<p>No connections yet.</p>")
        # Refreshed while a test runs or a collector works through a mailbox (it has a time left).
        busy = any(r["status"] == "testing" or r.get("time_left") for r in rows)
        return HTMLResponse(document("Connections", "".join(body), refresh=busy))

    def row(self, who: Principal, c: dict[str, Any]) -> str:
        status, error = c["status"], c.get("status_error") or ""
        hover = error or STATUS_LABELS.get(status, status)
        icon = (f'<span class="status {esc(status)}" title="{esc(hover)}" aria-hidden="true"></span>'
                f'<span class="status-text" title="{esc(hover)}">{esc(STATUS_LABELS.get(status, status))}</span>')
        address = ""
        if c.get("address"):
            address = (f'<code class="address">{esc(c["address"])}</code> <button type="button" '
                       f'data-address="{esc(c["address"])}" onclick="navigator.clipboard.writeText(this.dataset.address)"'
                       ">Copy</button>")
        collector = f'<code>{esc(c["collected_by"])}</code>' if c.get("collected_by") else ""
        enabled = "on" if c["enabled"] else "off"
        actions, switch = "", f'<span class="enabled">{enabled}</span>'
        if who.account.admin:
            csrf, base = self.csrf_field(who), f"/connections/{esc(c['id'])}"
            flip = "disable" if c["enabled"] else "enable"
            switch = (f'<form class="inline" method="post" action="{base}/{flip}">{csrf}'
                      f'<button role="switch" class="enabled" aria-checked="{str(c["enabled"]).lower()}" '
                      f'aria-label="enabled: {enabled}; press to {flip}">{enabled}</button></form>')
            actions = (f'<form class="inline" method="post" action="{base}/test">{csrf}<button>Test</button></form> '
                       f'<a href="{base}/edit">Edit</a> <a href="{base}/delete">Delete</a>')
        return (f'<tr id="{esc(c["id"])}" data-status="{esc(status)}"><td>{icon}</td>'
                f'<td class="description">{esc(c["description"])}</td><td>{esc(c["type"])}</td>'
                f'<td>{address}</td><td class="last-message">{esc(c.get("last_message_at") or "never")}</td>'
                f'<td class="archived-24h">{esc(str(c.get("archived_24h", 0)))}</td>'
                f'<td class="progress">{esc(keep_parts_whole(progress_text(c)))}</td>'
                f'<td class="collector">{collector}</td>'
                f"<td>{switch}</td><td>{actions}</td></tr>")

    # --- add and edit ------------------------------------------------------------------

    def form(self, who: Principal, action: str, connection_type: ConnectionType, values: dict[str, Any],
             description: str, errors: dict[str, list[str]], editing: bool) -> str:
        parts = [f'<form method="post" action="{esc(action)}">{self.csrf_field(who)}',
                 f'<input type="hidden" name="type" value="{esc(connection_type.name)}">',
                 self.field("description", "Description", f'<input id="f-description" name="description" '
                            f'value="{esc(description)}">', errors)]
        defaults = {setting.name: setting.default for setting in connection_type.settings}
        for setting in connection_type.settings:
            name, current = setting.name, values.get(setting.name, "")
            current = ",".join(map(str, current)) if isinstance(current, list) else current
            field_id, input_name = f"f-{name}", f"{SETTING_PREFIX}{name}"
            if setting.kind == "secret":
                hint = ' placeholder="unchanged"' if editing else ""
                control = f'<input id="{field_id}" name="{input_name}" type="password" autocomplete="off"{hint}>'
            elif setting.choices or setting.kind == "bool":
                options = list(setting.choices) if setting.choices else ["true", "false"]
                shown = str(current).lower() if setting.kind == "bool" and current != "" else str(current)
                control = f'<select id="{field_id}" name="{input_name}"><option value=""></option>' + "".join(
                    f'<option{" selected" if shown == o else ""}>{esc(o)}</option>' for o in options) + "</select>"
            else:
                kind = "number" if setting.kind == "int" else "text"
                control = f'<input id="{field_id}" name="{input_name}" type="{kind}" value="{esc(current)}">'
            label = f"{name}{' (required)' if setting.required else ''}"
            help_text = f'<br><small>{esc(setting.help)}</small>' if setting.help else ""
            parts.append(self.conditional(setting, values, defaults, self.field(name, label, control + help_text, errors)))
        parts.append(f'<p><button>{"Save" if editing else "Next"}</button> <a href="/">Cancel</a></p></form>')
        if any(setting.applies_when for setting in connection_type.settings):
            parts.append(SHOW_APPLICABLE_SCRIPT)
        return "".join(parts)

    @staticmethod
    def conditional(setting: Setting, values: dict[str, Any], defaults: dict[str, Any], field: str) -> str:
        """A field that applies only when another setting has a value (``applies_when``):
        hidden otherwise, and shown as soon as that value is chosen (SHOW_APPLICABLE_SCRIPT).
        An empty choice means the other setting's default."""
        if not setting.applies_when:
            return field
        other, wanted = setting.applies_when
        default = "" if defaults.get(other) is None else str(defaults[other])
        chosen = str(values.get(other) or "") or default
        hidden = "" if chosen == wanted else " hidden"
        return (f'<div class="applies" data-setting="{esc(other)}" data-value="{esc(wanted)}" '
                f'data-default="{esc(default)}"{hidden}>{field}</div>')

    @staticmethod
    def field(name: str, label: str, control: str, errors: dict[str, list[str]]) -> str:
        problems = "".join(f'<span class="error" id="e-{esc(name)}" role="alert"> {esc(p)}</span>'
                           for p in errors.get(name, []))
        return f'<label for="f-{esc(name)}">{esc(label)}</label>{control}{problems}'

    @staticmethod
    def settings_from(form: Any, editing: bool) -> dict[str, str]:
        return {
            key[len(SETTING_PREFIX):]: str(value)
            for key, value in form.multi_items()
            if key.startswith(SETTING_PREFIX) and str(value) != "" and not (editing and str(value) == MASK)
        }

    def errors_by_field(self, problems: list[str], names: list[str]) -> dict[str, list[str]]:
        from mailpipe.http.api import mentions

        found: dict[str, list[str]] = {}
        for problem in problems:
            owner = next((n for n in names if mentions(problem, n)), "description")
            found.setdefault(owner, []).append(problem)
        return found

    async def new(self, request: Request) -> Response:
        who = await self.who(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        types = self.runtime.host.connection_types
        chosen = types.get(request.query_params.get("type", ""))
        body = [self.header(who), "<h1>Add connection</h1>",
                '<form method="get" action="/connections/new"><label for="f-type">Type</label>'
                '<select id="f-type" name="type">']
        body += [f'<option value="{esc(n)}"{" selected" if chosen and chosen.name == n else ""}>'
                 f"{esc(n)} — {esc(t.description)}</option>" for n, t in sorted(types.items())]
        body.append("</select> <button>Choose</button></form>")
        if chosen:
            body.append(self.form(who, "/connections/new", chosen, {}, "", {}, editing=False))
        return HTMLResponse(document("Add connection", "".join(body)))

    async def add(self, request: Request) -> Response:
        who, form, refused = await self.change(request)
        if refused:
            return refused
        assert who is not None
        type_name, description = str(form.get("type", "")), str(form.get("description", "")).strip()
        connection_type = self.runtime.host.connection_types.get(type_name)
        if connection_type is None:
            return HTMLResponse(document("Add connection", "<p>Choose a type first.</p>"), 422)
        settings = self.settings_from(form, editing=False)
        try:
            if not description:
                raise ValidationError(["description: required, a text that tells connections apart"])
            connection = await self.runtime.service.add(type_name, description, settings, who.actor)
        except ValidationError as problem:
            names = ["description"] + [s.name for s in connection_type.settings]
            errors = self.errors_by_field(problem.problems, names)
            body = self.header(who) + "<h1>Add connection</h1>" + self.form(
                who, "/connections/new", connection_type, settings, description, errors, editing=False)
            return HTMLResponse(document("Add connection", body), 422)
        address = (f'<p>Its unique address: <code class="address" id="new-address">{esc(connection.address)}</code> '
                   f'<button type="button" data-address="{esc(connection.address)}" '
                   'onclick="navigator.clipboard.writeText(this.dataset.address)">Copy</button></p>'
                   "<p>Send the journal reports there. The connection is disabled until you enable it.</p>"
                   if connection.address else "<p>Test it, then enable it.</p>")
        body = (self.header(who) + f"<h1>Connection added</h1><p>{esc(connection.description)} "
                f"({esc(connection.type)})</p>{address}<p><a href=\"/\" id=\"done\">Done</a></p>")
        return HTMLResponse(document("Connection added", body), 201)

    async def edit_form(self, request: Request) -> Response:
        who, connection, refused = await self.viewing(request)
        if refused:
            return refused
        assert who is not None
        connection_type = self.runtime.host.connection_type(connection.type)
        shown = connection_view(self.runtime, connection)
        body = self.header(who) + f"<h1>Edit {esc(connection.description)}</h1>" + self.form(
            who, f"/connections/{connection.id}/edit", connection_type, shown["settings"], connection.description,
            {}, editing=True)
        return HTMLResponse(document("Edit connection", body))

    async def edit(self, request: Request) -> Response:
        who, form, refused = await self.change(request)
        if refused:
            return refused
        assert who is not None
        connection_id = request.path_params["id"]
        description = str(form.get("description", "")).strip() or None
        settings = self.settings_from(form, editing=True)
        try:
            connection = await self.runtime.service.edit(connection_id, settings, description, who.actor)
        except ValidationError as problem:
            current = await anyio.to_thread.run_sync(self.runtime.service.get, connection_id)
            connection_type = self.runtime.host.connection_type(current.type)
            names = ["description"] + [s.name for s in connection_type.settings]
            body = self.header(who) + "<h1>Edit connection</h1>" + self.form(
                who, f"/connections/{connection_id}/edit", connection_type, settings, description or "",
                self.errors_by_field(problem.problems, names), editing=True)
            return HTMLResponse(document("Edit connection", body), 422)
        except MailpipeError as problem:
            return HTMLResponse(document("Not changed", f"<p>{esc(problem)}</p>"), 400)
        notice = f"{connection.description} saved; its status is reset to untested."
        connection_type = self.runtime.host.connection_types.get(connection.type)
        if connection_type is not None and connection_type.receives == "pull":
            notice += " Press Test to check the new settings against the server."
        return RedirectResponse(f"/?notice={_quote(notice)}", status_code=303)

    # --- actions ----------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        who, _form, refused = await self.change(request)
        if refused:
            return refused
        assert who is not None
        connection_id, verb = request.path_params["id"], request.path_params["verb"]
        service = self.runtime.service
        try:
            if verb in ("enable", "disable"):
                await anyio.to_thread.run_sync(service.set_enabled, connection_id, verb == "enable", who.actor)
            elif verb == "test":
                await self.console.start_test(connection_id, who.actor)
            elif verb == "delete":
                await anyio.to_thread.run_sync(service.delete, connection_id, who.actor)
                return RedirectResponse(f"/?notice={_quote('Connection deleted.')}", status_code=303)
            else:
                return HTMLResponse(document("Not found", "<p>No such action.</p>"), 404)
        except NotFound as missing:
            return HTMLResponse(document("Not found", f"<p>{esc(missing)}</p>"), 404)
        return RedirectResponse(f"/#{connection_id}", status_code=303)

    async def confirm_delete(self, request: Request) -> Response:
        who, connection, refused = await self.viewing(request)
        if refused:
            return refused
        assert who is not None
        body = (self.header(who) + f"<h1>Delete {esc(connection.description)}?</h1>"
                "<p>Its archived mail stays; mail sent to its address is refused from now on.</p>"
                f'<form method="post" action="/connections/{esc(connection.id)}/delete">{self.csrf_field(who)}'
                '<button id="confirm-delete">Delete</button> <a href="/">Cancel</a></form>')
        return HTMLResponse(document("Delete connection", body))

    def routes(self) -> list[Route]:
        return [
            Route("/", self.connections, methods=["GET"]),
            Route("/connections/new", self.new, methods=["GET"]),
            Route("/connections/new", self.add, methods=["POST"]),
            Route("/connections/{id}/edit", self.edit_form, methods=["GET"]),
            Route("/connections/{id}/edit", self.edit, methods=["POST"]),
            Route("/connections/{id}/delete", self.confirm_delete, methods=["GET"]),
            Route("/connections/{id}/{verb}", self.action, methods=["POST"]),
        ]


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
