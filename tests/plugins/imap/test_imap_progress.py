"""Progress through a large mailbox (issue 13 item 5): messages left, rate, time left.

A real ``mailpipe serve`` collects a few thousand messages from the real
Dovecot over TLS, through a throttled loopback relay (tests/slow_link.py) so
the drain lasts seconds on any machine. While it works, the CLI's
``connections show --json``, the API and the page each show a snapshot with
messages left, a rate and a time left; once the mailbox is drained, nothing
is left and the time left is absent. Polls only: no timing assertion.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.cli import run_mailpipe
from tests.support.helpers import ServerProcess, cli, free_port, wait_until, write_config
from tests.support.imap import add_imap_connection, make_message, multi_append
from tests.support.peers.dovecot import Dovecot
from tests.support.slow_link import SlowLink

COUNT = 3000
#: About 1.5 MB to fetch: ten seconds or more behind the relay, however fast the machine.
LINK_BYTES_PER_SECOND = 128 * 1024
WAIT = 240.0  # bounds only: a broken build fails instead of hanging
PASSWORD = "correct horse battery"
#: The page keeps each part whole (no-break spaces inside, "\s" matches them).
PAGE_PROGRESS = re.compile(r'<td class="progress">([\d,]+)\sleft · ([\d.,]+)/(?:s|min) · (.+?)\sleft</td>')


def working(fields: dict[str, Any]) -> bool:
    """A snapshot taken while collecting: messages left, a rate, a time left that fits them."""
    remaining, rate, seconds = fields["remaining"], fields["rate"], fields["time_left"]
    if not (remaining and rate and seconds):
        return False
    assert 0 < remaining <= COUNT and rate > 0, fields
    assert isinstance(seconds, int) and abs(seconds - remaining / rate) <= 1, fields  # rate is rounded
    return True


def row_of(page: str, connection_id: str) -> str:
    return page.split(f'id="{connection_id}"')[1].split("</tr>")[0]


def test_messages_left_rate_and_time_left_while_draining_a_large_mailbox(
    tmp_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    multi_append(dovecot, user, [make_message(n, body_bytes=300) for n in range(COUNT)])
    http_port = free_port()
    config = write_config(tmp_path, extra=f'[http]\nlisten = "127.0.0.1:{http_port}"\n')
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    cli(config, "users", "add", "alice", "--role", "admin", "--password-file", str(password_file), check=True)
    token = cli(config, "tokens", "create", "--user", "alice", check=True).json["token"]
    url = f"http://127.0.0.1:{http_port}"

    with SlowLink(dovecot.imaps_port, LINK_BYTES_PER_SECOND) as link:
        connection_id = add_imap_connection(config, dovecot, user, password, port=link.port)
        never = cli(config, "connections", "show", connection_id, check=True).json
        assert (never["remaining"], never["rate"], never["time_left"]) == (None, None, None)

        with ServerProcess(config), \
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api, \
                httpx.Client(base_url=url, timeout=60) as browser:
            assert browser.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 303
            cli(config, "connections", "enable", connection_id, check=True)
            seen: dict[str, Any] = {}
            lefts: list[int] = []

            def all_three_seen() -> bool:
                shown = cli(config, "connections", "show", connection_id, check=True).json
                if shown["remaining"] is not None:
                    lefts.append(shown["remaining"])
                if working(shown):
                    seen.setdefault("cli", shown)
                served = api.get(f"/api/v1/connections/{connection_id}").json()
                if working(served):
                    seen.setdefault("api", served)
                page = browser.get("/")
                assert page.status_code == 200
                cell = PAGE_PROGRESS.search(row_of(page.text, connection_id))
                if cell:
                    seen.setdefault("page", cell.group(0))
                    assert 'http-equiv="refresh"' in page.text  # the page follows the drain by itself
                assert not (shown["remaining"] == 0 and len(seen) < 3), (
                    f"drained before every face showed progress: saw {seen}")
                return len(seen) == 3

            wait_until(all_three_seen, WAIT, 0.2, "progress never showed while the mailbox was drained")
            assert lefts == sorted(lefts, reverse=True), lefts  # messages left only go down

            drained = wait_until(
                lambda: (s := cli(config, "connections", "show", connection_id, check=True).json)["remaining"] == 0
                and s,
                WAIT, 0.5, "the mailbox was never reported drained",
            )
            assert drained["time_left"] is None
            text = run_mailpipe("connections", "show", connection_id, "--config", str(config)).out
            assert re.search(r"progress: +0 left · ", text), text
            assert re.search(r"collected by: +\S+:\d+:", text), text  # host:pid:… of this server
            assert f'<td class="collector"><code>{drained["collected_by"]}</code></td>' in row_of(
                browser.get("/").text, connection_id)
            listed = run_mailpipe("connections", "list", "--config", str(config)).out
            assert "(0 left · " in listed, listed
            wait_until(lambda: dovecot.uids(user) == [], WAIT, 0.5, "after_archive=delete left mail behind")
            assert wait_until(
                lambda: cli(config, "connections", "show", connection_id, check=True).json["archived_24h"] == COUNT,
                WAIT, 0.5, "not every message was archived",
            )
            # Disabled: no collector, so neither a node collecting it nor a figure left from its pass.
            cli(config, "connections", "disable", connection_id, check=True)
            stopped = cli(config, "connections", "show", connection_id, check=True).json
            assert (stopped["collected_by"], stopped["remaining"], stopped["rate"]) == (None, None, None)
