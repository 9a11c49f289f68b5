"""The console's HTTP API against a real `mailpipe serve`, with a real HTTP client.

One server for the module (starting one costs seconds on a loaded
machine); tests that need a clean slate use their own connection. Login
rate limits are per remote address, so tests that log in use different
loopback source addresses (127.0.0.x) and different users.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.support.helpers import ServerProcess, cli, free_port, wait_until
from tests.support.journal_samples import build_exchange_report
from tests.support.smtp import SmtpSetup, make_setup, send, session_accepting, with_console

PASSWORD = "correct horse battery"
IMAP_SECRET = "imap-Secret-9f3b2"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    setup = make_setup(tmp_path_factory.mktemp("console"))
    url = with_console(setup)
    password_file = setup.root / "password"
    password_file.write_text(PASSWORD + "\n")
    for name, role in (("alice", "admin"), ("carol", "admin"), ("victor", "viewer")):
        cli(setup.config, "users", "add", name, "--role", role, "--password-file", str(password_file), check=True)
    tokens = {
        name: cli(setup.config, "tokens", "create", "--user", name, check=True).json
        for name in ("alice", "victor")
    }
    connection = setup.add("journal", "smtp_o365", enable=False,
                           undeliverable_journal_address="ndr@customer.example")
    setup.server = ServerProcess(setup.config).start()
    try:
        yield {
            "setup": setup,
            "url": url,
            "admin": tokens["alice"]["token"],
            "admin_token_id": tokens["alice"]["id"],
            "viewer": tokens["victor"]["token"],
            "connection": connection,
        }
    finally:
        setup.stop()


def client(console: dict[str, Any], token: str | None = None, source: str = "127.0.0.1") -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=console["url"], headers=headers, transport=transport, timeout=60,
                        follow_redirects=False)


def routes(console: dict[str, Any]) -> list[tuple[str, str]]:
    """Every API route from the OpenAPI description, with real ids filled in."""
    with client(console) as anonymous:
        spec = anonymous.get("/api/v1/openapi.json").json()
    found = []
    for path, operations in spec["paths"].items():
        for method in operations:
            found.append((method.upper(), path.replace("{id}", console["connection"]["id"])))
    assert len(found) >= 19, found
    return found


def test_nothing_without_credentials(console: dict[str, Any]) -> None:
    with client(console) as anonymous:
        for method, path in routes(console):
            response = anonymous.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
            assert "log in" in response.json()["error"]
        for open_path in ("/healthz", "/readyz", "/metrics", "/login", "/api/v1/openapi.json"):
            assert anonymous.get(open_path).status_code == 200, open_path
        assert anonymous.get("/").status_code == 303  # the page sends strangers to the login form
        bogus = anonymous.get("/api/v1/connections", headers={"Authorization": "Bearer mpt_not-a-token"})
        assert bogus.status_code == 401


def test_viewer_reads_but_cannot_change_anything(console: dict[str, Any]) -> None:
    before = cli(console["setup"].config, "connections", "show", console["connection"]["id"], check=True).json
    with client(console, console["viewer"]) as viewer:
        changes = [(m, p) for m, p in routes(console) if m not in ("GET", "HEAD")]
        assert {m for m, _ in changes} == {"POST", "PATCH", "DELETE"}
        for method, path in changes:
            response = viewer.request(method, path, json={"settings": {}, "type": "smtp_o365", "description": "x"})
            assert response.status_code == 403, (method, path, response.text)
            assert "viewer" in response.json()["error"]
        assert viewer.get("/api/v1/connections").status_code == 200
    after = cli(console["setup"].config, "connections", "show", console["connection"]["id"], check=True).json
    assert after == before


def login(http: httpx.Client, user: str, password: str) -> httpx.Response:
    return http.post("/login", data={"username": user, "password": password})


def test_cookie_session_needs_the_csrf_token(console: dict[str, Any]) -> None:
    connection_id = console["connection"]["id"]
    with client(console, source="127.0.0.2") as browser:
        response = login(browser, "alice", PASSWORD)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        me = browser.get("/api/v1/me").json()
        assert me["name"] == "alice" and me["csrf_token"]
        refused = browser.post(f"/api/v1/connections/{connection_id}/disable")
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        wrong = browser.post(f"/api/v1/connections/{connection_id}/disable", headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        accepted = browser.post(f"/api/v1/connections/{connection_id}/disable",
                                headers={"X-CSRF-Token": me["csrf_token"]})
        assert accepted.status_code == 200 and accepted.json()["enabled"] is False
        assert browser.post("/logout").status_code == 303
        assert browser.get("/api/v1/me").status_code == 401


def test_failed_logins_are_rate_limited_per_address_and_per_user(console: dict[str, Any]) -> None:
    # Per address: five wrong passwords (for names that do not even exist), then even alice is held back.
    with client(console, source="127.0.0.3") as attacker:
        for attempt in range(5):
            assert login(attacker, f"nobody{attempt}", "wrong").status_code == 401
        held = login(attacker, "alice", PASSWORD)
        assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    # Per user: five wrong passwords for carol from different addresses, then carol is held back anywhere.
    for number in range(5):
        with client(console, source=f"127.0.1.{number + 1}") as somewhere:
            assert login(somewhere, "carol", "wrong").status_code == 401
    with client(console, source="127.0.2.1") as elsewhere:
        assert login(elsewhere, "carol", PASSWORD).status_code == 429
    with client(console, source="127.0.2.2") as fresh:  # others are not affected
        assert login(fresh, "alice", PASSWORD).status_code == 303


def test_validation_errors_name_the_field(console: dict[str, Any]) -> None:
    with client(console, console["admin"]) as admin:
        missing = admin.post("/api/v1/connections", json={"type": "smtp_o365", "description": "no settings"})
        assert missing.status_code == 422
        assert missing.json()["fields"] == ["undeliverable_journal_address"]
        assert "undeliverable_journal_address" in missing.json()["error"]
        shapeless = admin.post("/api/v1/connections", json={"type": "smtp_o365", "settings": []})
        assert shapeless.status_code == 422
        assert set(shapeless.json()["fields"]) == {"description", "settings"}
        bad_value = admin.post("/api/v1/connections", json={
            "type": "imap", "description": "x",
            "settings": {"server": "127.0.0.1", "username": "u", "password": "p", "port": "many"}})
        assert bad_value.status_code == 422 and "port" in bad_value.json()["fields"]
        assert admin.post("/api/v1/connections", content=b"{not json").status_code == 422


def test_the_api_answers_what_the_cli_prints(console: dict[str, Any]) -> None:
    config = console["setup"].config
    connection_id = console["connection"]["id"]
    pairs = {
        "/api/v1/connections": ["connections", "list"],
        f"/api/v1/connections/{connection_id}": ["connections", "show", connection_id],
        "/api/v1/plugins": ["plugins"],
        "/api/v1/sinks": ["sinks", "list"],
        "/api/v1/spool": ["spool", "list"],
        "/api/v1/quarantine": ["spool", "list", "--quarantine"],
        "/api/v1/archive": ["archive", "list"],
        f"/api/v1/audit?connection={connection_id}": ["audit", "list", "--connection", connection_id],
    }
    with client(console, console["admin"]) as admin:
        for path, args in pairs.items():
            from_api = admin.get(path)
            assert from_api.status_code == 200, (path, from_api.text)
            assert from_api.json() == cli(config, *args, check=True).json, path


def test_add_returns_the_address_and_test_is_asynchronous(console: dict[str, Any]) -> None:
    with client(console, console["admin"]) as admin:
        added = admin.post("/api/v1/connections", json={
            "type": "smtp_o365", "description": "from the API",
            "settings": {"undeliverable_journal_address": "ndr@customer.example"}})
        assert added.status_code == 201, added.text
        connection = added.json()
        assert re.match(r"^j-[a-z2-7]+@journal\.", connection["address"])
        started = admin.post(f"/api/v1/connections/{connection['id']}/test")
        assert started.status_code == 202 and started.json()["status"] == "testing"
        finished = wait_until(lambda: (lambda c: c if c["status"] in ("ok", "failed") else None)(
            admin.get(f"/api/v1/connections/{connection['id']}").json()), timeout=120)
        assert finished["status"] == "ok", finished
        edited = admin.patch(f"/api/v1/connections/{connection['id']}", json={"description": "renamed"})
        assert edited.status_code == 200 and edited.json()["description"] == "renamed"
        assert edited.json()["status"] == "untested"
        deleted = admin.delete(f"/api/v1/connections/{connection['id']}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert admin.get(f"/api/v1/connections/{connection['id']}").status_code == 404


def test_audit_records_api_and_cli_changes_once_without_secrets(console: dict[str, Any]) -> None:
    config = console["setup"].config
    with client(console, console["admin"]) as admin:
        added = admin.post("/api/v1/connections", json={
            "type": "imap", "description": "audited",
            "settings": {"server": "127.0.0.1", "port": 1, "username": "u", "password": IMAP_SECRET}})
        assert added.status_code == 201, added.text
        connection_id = added.json()["id"]
        assert admin.post(f"/api/v1/connections/{connection_id}/enable").status_code == 200
    cli(config, "connections", "disable", connection_id, check=True)
    cli(config, "connections", "edit", connection_id, "--set", "password=" + IMAP_SECRET + "-new", check=True)
    entries = cli(config, "audit", "list", "--connection", connection_id, check=True).json["entries"]
    actions = [(e["action"], e["actor"], e["remote"]) for e in entries]
    api_actor = f"alice (token {console['admin_token_id']})"
    assert actions[:3] == [
        ("connection.add", api_actor, "127.0.0.1"),
        ("connection.enable", api_actor, "127.0.0.1"),
        ("connection.disable", actions[2][1], "local"),
    ]
    assert actions[2][1].startswith("cli:") and actions[3][0] == "connection.edit"
    assert len(actions) == 4
    assert entries[1]["before"]["enabled"] is False and entries[1]["after"]["enabled"] is True
    assert entries[0]["after"]["settings"]["password"] == "********"
    whole = json.dumps(cli(config, "audit", "list", check=True).json)
    assert IMAP_SECRET not in whole and console["admin"] not in whole and PASSWORD not in whole
    with client(console, console["admin"]) as admin:
        since = admin.get("/api/v1/audit", params={"connection": connection_id, "since": "1h"}).json()
        assert len(since["entries"]) == 4
        assert admin.get("/api/v1/audit", params={"since": "yesterday"}).status_code == 422


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric_name, _, label_text = key.partition("{")
        found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if metric_name == name and found == wanted:
            return float(value)
    return 0.0


def test_metrics_count_exactly_the_messages_sent(console: dict[str, Any]) -> None:
    setup: SmtpSetup = console["setup"]
    with client(console, console["admin"]) as admin:
        added = admin.post("/api/v1/connections", json={
            "type": "smtp_o365", "description": "counted",
            "settings": {"undeliverable_journal_address": "ndr@customer.example"}}).json()
        admin.post(f"/api/v1/connections/{added['id']}/enable")
        before = admin.get("/metrics").text
        archived_before = metric(before, "mailpipe_messages_archived_total", sink="filesystem")
        assert metric(before, "mailpipe_messages_accepted_total", connection=added["id"]) == 0
        sent = 3
        smtp = wait_until(lambda: session_accepting(setup, added["address"]), timeout=30)
        # read after the wait: polls made before the server saw the enable were refused as unknown
        unknown_before = metric(admin.get("/metrics").text, "mailpipe_recipients_refused_total",
                                reason="unknown", reply_class="5xx")
        for _ in range(sent):
            report = build_exchange_report(message_id=f"<{uuid.uuid4()}@contoso.com>")
            code, text, _ = send(smtp, "journal@contoso.com", [added["address"]], report)
            assert code == 250, text
        smtp.mail("journal@contoso.com")
        assert smtp.rcpt("j-nosuchaddress@journal.test")[0] == 550
        smtp.quit()

        def archived_now() -> float:
            return metric(admin.get("/metrics").text, "mailpipe_messages_archived_total", sink="filesystem")

        wait_until(lambda: archived_now() >= archived_before + sent, timeout=120)
        after = admin.get("/metrics").text
        # Live status: each process (SMTP intake, pipeline) flushes about once a
        # second, so poll until both have; then the API and the page agree.
        with client(console, source="127.0.0.6") as browser:
            assert login(browser, "alice", PASSWORD).status_code == 303

            def live_on_both() -> Any:
                row = browser.get("/").text.split(f'id="{added["id"]}"')[1].split("</tr>")[0]
                live = admin.get(f"/api/v1/connections/{added['id']}").json()
                shown = f'<td class="archived-24h">{sent}</td>' in row
                return shown and live["archived_24h"] == sent and live["last_message_at"] and (
                    f'<td class="last-message">{live["last_message_at"]}</td>' in row) and live

            live = wait_until(live_on_both, timeout=60, interval=0.3)
    assert live["status"] == "ok"
    assert metric(after, "mailpipe_messages_accepted_total", connection=added["id"]) == sent
    assert metric(after, "mailpipe_messages_archived_total", sink="filesystem") == archived_before + sent
    assert metric(after, "mailpipe_recipients_refused_total", reason="unknown", reply_class="5xx") == unknown_before + 1
    assert metric(after, "mailpipe_spool_depth") == 0
    assert "mailpipe_sink_store_seconds_bucket" in after


def test_archive_and_quarantine_through_the_api(console: dict[str, Any]) -> None:
    config = console["setup"].config
    with client(console, console["admin"]) as admin:
        listed = admin.get("/api/v1/archive").json()["messages"]
        assert listed, "the metrics test archived messages before this one"
        entry = listed[0]
        shown = admin.get(f"/api/v1/archive/{entry['id']}")
        assert shown.json() == cli(config, "archive", "show", entry["id"], check=True).json
        raw = admin.get(f"/api/v1/archive/{entry['id']}/raw")
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("message/rfc822")
        assert raw.content == Path(entry["path"]).read_bytes()
        assert admin.get("/api/v1/archive/ffffffffffff").status_code == 404
        retried = admin.post("/api/v1/quarantine/retry")
        assert retried.status_code == 200 and retried.json()["retried"] == []
        assert admin.post("/api/v1/quarantine/retry", json={"ids": ["nope"]}).status_code == 404
        assert admin.post("/api/v1/quarantine/retry", json={"ids": "all"}).json()["fields"] == ["ids"]



def test_readyz_is_503_while_the_required_sink_is_down(console: dict[str, Any]) -> None:
    archive: Path = console["setup"].archive
    with client(console) as anonymous:
        assert anonymous.get("/readyz").status_code == 200
        archive.mkdir(exist_ok=True)
        aside = archive.with_name("archive-aside")
        archive.rename(aside)
        archive.write_text("not a directory")
        try:
            down = anonymous.get("/readyz")
            assert down.status_code == 503
            assert "filesystem" in down.json()["error"]
        finally:
            archive.unlink()
            aside.rename(archive)
        assert anonymous.get("/readyz").status_code == 200


def test_serve_says_how_to_create_the_first_user(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    setup.config.write_text(setup.config.read_text().replace(
        '[http]\nlisten = ""\n', f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'))
    with ServerProcess(setup.config) as server:
        server.wait_for_log("mailpipe users add NAME --role admin")


def test_users_and_tokens_from_the_cli(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    short = tmp_path / "short"
    short.write_text("short")
    config = setup.config
    refused = cli(config, "users", "add", "ann", "--role", "admin", "--password-file", str(short))
    assert refused.code == 1 and "at least 8" in json.loads(refused.err)["error"]
    no_terminal = cli(config, "users", "add", "ann", "--role", "admin")
    assert no_terminal.code == 1 and "--password-file" in json.loads(no_terminal.err)["error"]
    cli(config, "users", "add", "ann", "--role", "admin", "--password-file", str(password), check=True)
    token = cli(config, "tokens", "create", "--user", "ann", check=True).json
    assert token["token"].startswith("mpt_")
    assert "token" not in cli(config, "tokens", "list", check=True).json["tokens"][0]
    last_admin = cli(config, "users", "delete", "ann")
    assert last_admin.code == 1 and "last admin" in json.loads(last_admin.err)["error"]
    cli(config, "tokens", "revoke", token["id"], check=True)
    assert cli(config, "tokens", "list", check=True).json["tokens"] == []
    database = (tmp_path / "data" / "mailpipe.db").read_bytes()
    assert token["token"].encode() not in database and PASSWORD.encode() not in database


def test_console_over_tls_sets_a_secure_cookie(tmp_path: Path, certs: Any) -> None:
    setup = make_setup(tmp_path)
    port = free_port()
    setup.config.write_text(setup.config.read_text().replace(
        '[http]\nlisten = ""\n',
        f'[http]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{certs.cert_file}"\ntls_key = "{certs.key_file}"\n'))
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    cli(setup.config, "users", "add", "alice", "--role", "admin", "--password-file", str(password), check=True)
    with ServerProcess(setup.config):
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=certs.client_context(), timeout=60) as browser:
            response = login(browser, "alice", PASSWORD)
            assert response.status_code == 303
            assert "secure" in response.headers["set-cookie"].lower()
            assert browser.get("/api/v1/me").json()["name"] == "alice"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:2000]
    return found.group(1)


def row_of(page: str, connection_id: str) -> str:
    found = re.search(rf'<tr id="{connection_id}".*?</tr>', page, re.S)
    return found.group(0) if found else ""


def test_the_connections_page_add_enable_test_edit_delete(console: dict[str, Any]) -> None:
    config = console["setup"].config
    with client(console, source="127.0.0.5") as browser:
        assert login(browser, "alice", PASSWORD).status_code == 303
        form = browser.get("/connections/new", params={"type": "smtp_o365"}).text
        assert 'name="setting.undeliverable_journal_address"' in form
        token = csrf_of(form)
        missing = browser.post("/connections/new", data={"csrf_token": token, "type": "smtp_o365",
                                                          "description": "From the page"})
        assert missing.status_code == 422
        assert 'id="e-undeliverable_journal_address"' in missing.text  # the error sits by its field
        no_token = browser.post("/connections/new", data={"type": "smtp_o365", "description": "x",
                                                           "setting.undeliverable_journal_address": "n@customer.example"})
        assert no_token.status_code == 403
        added = browser.post("/connections/new", data={
            "csrf_token": token, "type": "smtp_o365", "description": "From the page",
            "setting.undeliverable_journal_address": "ndr@customer.example"})
        assert added.status_code == 201
        address = re.search(r'id="new-address">([^<]+)<', added.text).group(1)
        connection = next(c for c in cli(config, "connections", "list", check=True).json["connections"]
                          if c["address"] == address)
        connection_id = connection["id"]
        row = row_of(browser.get("/").text, connection_id)
        assert address in row and 'data-status="untested"' in row and 'aria-checked="false"' in row

        assert browser.post(f"/connections/{connection_id}/enable", data={"csrf_token": token}).status_code == 303
        assert 'aria-checked="true"' in row_of(browser.get("/").text, connection_id)
        assert browser.post(f"/connections/{connection_id}/test", data={"csrf_token": token}).status_code == 303
        wait_until(lambda: 'data-status="ok"' in row_of(browser.get("/").text, connection_id), timeout=120)

        assert 'value="From the page"' in browser.get(f"/connections/{connection_id}/edit").text
        edited = browser.post(f"/connections/{connection_id}/edit", data={
            "csrf_token": token, "type": "smtp_o365", "description": "Renamed on the page",
            "setting.undeliverable_journal_address": "ndr@customer.example"})
        assert edited.status_code == 303
        row = row_of(browser.get("/").text, connection_id)
        assert "Renamed on the page" in row and 'data-status="untested"' in row

        confirm = browser.get(f"/connections/{connection_id}/delete")
        assert "Delete Renamed on the page?" in confirm.text
        assert browser.post(f"/connections/{connection_id}/delete", data={"csrf_token": token}).status_code == 303
        assert row_of(browser.get("/").text, connection_id) == ""

    actions = [(e["action"], e["actor"], e["remote"])
               for e in cli(config, "audit", "list", "--connection", connection_id, check=True).json["entries"]]
    assert [a for a, _, _ in actions] == ["connection.add", "connection.enable", "connection.test",
                                          "connection.test_result", "connection.edit", "connection.delete"]
    assert {(actor, remote) for _, actor, remote in actions} == {("alice", "127.0.0.5")}


def test_a_viewer_sees_the_page_without_forms(console: dict[str, Any]) -> None:
    with client(console, source="127.0.0.6") as browser:
        assert login(browser, "victor", PASSWORD).status_code == 303
        page = browser.get("/").text
        assert console["connection"]["id"] in page
        assert "Add connection" not in page and "/enable" not in page and "csrf_token" not in page.split("</header>")[1]
        refused = browser.post(f"/connections/{console['connection']['id']}/enable", data={"csrf_token": "x"})
        assert refused.status_code == 403


def test_a_password_change_ends_open_sessions(console: dict[str, Any]) -> None:
    setup: SmtpSetup = console["setup"]
    with client(console, source="127.0.0.7") as browser:
        assert login(browser, "victor", PASSWORD).status_code == 303
        assert browser.get("/api/v1/me").status_code == 200
        cli(setup.config, "users", "passwd", "victor", "--password-file", str(setup.root / "password"), check=True)
        assert browser.get("/api/v1/me").status_code == 401
        assert login(browser, "victor", PASSWORD).status_code == 303  # a fresh login works
        assert browser.get("/api/v1/me").status_code == 200


def test_users_add_asks_for_the_password_twice_without_echo(tmp_path: Path) -> None:
    from tests.support.cli import run_in_terminal

    config = make_setup(tmp_path).config
    code, shown = run_in_terminal(["users", "add", "dora", "--role", "viewer", "--config", str(config)],
                                  {"password (not echoed): ": PASSWORD, "again: ": PASSWORD})
    assert code == 0, shown
    assert PASSWORD not in shown and "user dora added (viewer)" in shown
    code, shown = run_in_terminal(["users", "passwd", "dora", "--config", str(config)],
                                  {"password (not echoed): ": PASSWORD, "again: ": PASSWORD + "x"})
    assert code == 1 and "differ" in shown
