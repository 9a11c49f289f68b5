"""The Connections page in a real browser: Debian's Chromium, headless, driven by Selenium.

Why a real browser: the page's promises (a switch that works from the
keyboard, the error on hover, a Next step that shows the address, a
confirmation before delete, a list that fits a phone) live in the HTML the
browser renders, which an HTTP client never exercises. The tests walk the
seed's flow against a real ``mailpipe serve`` and check what the page shows
(text, classes, attributes), not only status codes.

Nothing is downloaded: Selenium is pointed at /usr/bin/chromium and
/usr/bin/chromedriver (Debian's chromium and chromium-driver), so Selenium
Manager never runs. Without them the tests skip, or fail under
``MAILPIPE_REQUIRE_PEERS=1`` (CI), like every other real peer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import ServerProcess, cli, wait_until
from tests.support.journal_samples import build_exchange_report
from tests.support.peers.dovecot import Dovecot
from tests.support.peers.require import peer_missing
from tests.support.smtp import make_setup, send, session_accepting, with_console

pytestmark = pytest.mark.peer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"
WAIT = 80  # a generous bound for a loaded machine; never an assertion about speed
NDR = "ndr@customer.example"


def _require_browser() -> None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            peer_missing(f"{path} not found; install Debian's {package} (apt-get install {package})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        peer_missing("selenium is not installed; pip install -e '.[test]'")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running ``mailpipe serve`` with the console on a free port and one admin."""
    _require_browser()
    setup = make_setup(tmp_path_factory.mktemp("browser-console"))
    url = with_console(setup)
    password_file = setup.root / "password"
    password_file.write_text(PASSWORD + "\n")
    cli(setup.config, "users", "add", "olivia", "--role", "admin", "--password-file", str(password_file), check=True)
    setup.server = ServerProcess(setup.config).start()
    try:
        yield {"setup": setup, "url": url}
    finally:
        setup.stop()


@pytest.fixture(scope="module")
def driver(console: dict[str, Any]) -> Iterator[Any]:
    """One headless Chromium for the module, logged in as the admin."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mailpipe-chromium-")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def screenshot_on_failure(
    browser: Any, tmp_path: Path, name: str, server: ServerProcess | None = None
) -> Iterator[None]:
    """Save what the browser showed when a step failed, and say where."""
    try:
        yield
    except BaseException:
        shot = tmp_path / f"{name}.png"
        browser.get_screenshot_as_file(str(shot))
        (tmp_path / f"{name}.html").write_text(browser.page_source)
        print(f"\nscreenshot of the failed step: {shot} (page source next to it)")
        if server is not None:
            print("the server's last log lines:\n" + "\n".join(server.lines[-30:]))
        raise


def wait_for(browser: Any, condition: Callable[[Any], Any], message: str,
             also_ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll ``condition`` (bounded, generous); stale elements after a page refresh are retried."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, *also_ignore)
                         ).until(condition, message)


def by_css(browser: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector)


def all_css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def log_in(browser: Any, url: str) -> None:
    browser.get(url + "/")
    wait_for(browser, lambda b: b.current_url.endswith("/login"), "strangers are sent to the login form")
    by_css(browser, "input[name=username]").send_keys("olivia")
    by_css(browser, "input[name=password]").send_keys(PASSWORD)
    by_css(browser, "button[type=submit]").click()
    wait_for(browser, lambda b: by_css(b, "h1").text == "Connections", "the Connections list after login")
    assert "olivia" in by_css(browser, "header").text and "(admin)" in by_css(browser, "header").text


def choose_type(browser: Any, url: str, type_name: str) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(url + "/")
    by_css(browser, "a[href='/connections/new']").click()
    wait_for(browser, lambda b: by_css(b, "h1").text == "Add connection", "the add form")
    Select(by_css(browser, "#f-type")).select_by_value(type_name)
    by_css(browser, "#f-type").find_element("xpath", "following-sibling::button").click()
    # the fields follow the chosen type: its settings appear as inputs
    wait_for(browser, lambda b: by_css(b, "input[name=type]").get_attribute("value") == type_name,
             f"the {type_name} fields")


def fill(browser: Any, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = by_css(browser, f"#f-{name}")
        field.clear()
        field.send_keys(value)


def submit(browser: Any) -> None:
    """Press the form's Next / Save button (the first button of the form below the heading)."""
    by_css(browser, "h1 ~ form[method=post] button").click()


def row(browser: Any, connection_id: str) -> Any:
    return by_css(browser, f"tr[id='{connection_id}']")


def row_status(browser: Any, connection_id: str) -> str:
    return str(row(browser, connection_id).get_attribute("data-status"))


def press_test(browser: Any, url: str, connection_id: str) -> None:
    from selenium.common.exceptions import WebDriverException

    browser.get(url + "/")
    # Mark this document; the page the Test form leads to has no mark. (Selenium's
    # staleness_of asks the old element while Chromium navigates, and under load the
    # driver then answers with errors other than "stale", which it does not ignore.)
    browser.execute_script("window.mailpipeBeforeTest = true")
    row(browser, connection_id).find_element("xpath", ".//form[contains(@action, '/test')]/button").click()
    wait_for(browser, lambda b: b.execute_script("return window.mailpipeBeforeTest === undefined"),
             "the page after pressing Test", also_ignore=(WebDriverException,))


def wait_for_status(browser: Any, url: str, connection_id: str, wanted: str) -> Any:
    """The row's status once it settles on ``wanted``. While the row says testing the
    page must refresh itself (no reload from here: that is part of what is checked)."""
    def settled(b: Any) -> Any:
        if row_status(b, connection_id) == "testing":
            return False
        if row_status(b, connection_id) != wanted:
            b.get(url + "/")
            return False
        return row(b, connection_id)

    return wait_for(browser, settled, f"connection {connection_id} status {wanted}")


def api_json(browser: Any, url: str, path: str) -> Any:
    """A GET of the API in the logged-in browser (the page's session cookie), as JSON."""
    browser.get(url + path)
    return json.loads(by_css(browser, "body").text)


def test_the_seed_flow_in_a_real_browser(
    console: dict[str, Any], driver: Any, tmp_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    url, setup = console["url"], console["setup"]
    with screenshot_on_failure(driver, tmp_path, "login", console["setup"].server):
        log_in(driver, url)

    # --- add an smtp_o365 connection; Next shows its unique address; Done ---------------------
    with screenshot_on_failure(driver, tmp_path, "add-o365", console["setup"].server):
        choose_type(driver, url, "smtp_o365")
        fill(driver, {"description": "Contoso journal", "undeliverable_journal_address": "not an address"})
        submit(driver)
        problem = wait_for(driver, lambda b: by_css(b, "#e-undeliverable_journal_address"),
                           "the validation error next to its field")
        assert "not an address" in problem.text
        assert by_css(driver, "#f-description").get_attribute("value") == "Contoso journal"  # kept
        fill(driver, {"undeliverable_journal_address": NDR})
        submit(driver)
        address = wait_for(driver, lambda b: by_css(b, "#new-address"), "the unique address (Next step)").text
        assert address.endswith("@journal.test"), address
        copy = by_css(driver, "button[data-address]")
        assert copy.get_attribute("data-address") == address and copy.text == "Copy"
        by_css(driver, "#done").click()
        wait_for(driver, lambda b: by_css(b, "h1").text == "Connections", "back on the list after Done")
        listed = [r for r in all_css(driver, "tbody tr") if r.find_element("css selector", ".description").text
                  == "Contoso journal"]
        assert len(listed) == 1
        o365 = str(listed[0].get_attribute("id"))
        assert listed[0].find_element("css selector", "code.address").text == address
        switch = listed[0].find_element("css selector", "button[role=switch]")
        assert switch.get_attribute("aria-checked") == "false" and switch.text == "off"

    # --- enable it with the switch, keyboard only: Tab to it, press Space ------------------------
    with screenshot_on_failure(driver, tmp_path, "enable-by-keyboard", console["setup"].server):
        wanted = row(driver, o365).find_element("css selector", "button[role=switch]")
        for _ in range(60):  # bounded: the page has far fewer focusable elements
            ActionChains(driver).send_keys(Keys.TAB).perform()
            if driver.switch_to.active_element == wanted:
                break
        else:
            raise AssertionError("Tab never reached the enable switch")
        ActionChains(driver).send_keys(Keys.SPACE).perform()
        wait_for(driver, lambda b: row(b, o365).find_element("css selector", "button[role=switch]")
                 .get_attribute("aria-checked") == "true", "the switch shows enabled")
        switch = row(driver, o365).find_element("css selector", "button[role=switch]")
        assert switch.text == "on" and "press to disable" in str(switch.get_attribute("aria-label"))

    # --- a journal report to the address read from the page is archived ---------------------------
    with screenshot_on_failure(driver, tmp_path, "archive", console["setup"].server):
        message_id = f"<{uuid.uuid4()}@contoso.com>"
        smtp = wait_until(lambda: session_accepting(setup, address), timeout=WAIT, message="the enabled address accepts")
        try:
            code, text, _ = send(smtp, "journal@contoso.com", [address], build_exchange_report(message_id=message_id))
        finally:
            smtp.quit()
        assert code == 250, text
        # The row's live status: the archived count and the last message's time, as the server reports them
        def row_shows_the_message(browser: Any) -> bool:
            browser.get(url + "/")
            row = by_css(browser, f"tr[id='{o365}']")
            archived_cell = row.find_element("css selector", "td.archived-24h").text
            last_cell = row.find_element("css selector", "td.last-message").text
            return archived_cell == "1" and last_cell != "never"

        wait_for(driver, row_shows_the_message, "the row's archived count and last message time")
        # ...and the archive agrees, read through the API in the same browser session
        mine = [m for m in api_json(driver, url, "/api/v1/archive")["messages"] if m["connection_id"] == o365]
        assert len(mine) == 1 and mine[0]["journal_report"] is True

    # --- an imap connection with a wrong password: Test turns it red, the error on hover ---------
    user, password = fresh_imap_user
    with screenshot_on_failure(driver, tmp_path, "imap-wrong-password", console["setup"].server):
        choose_type(driver, url, "imap")
        # The OAuth fields show only once auth = oauth2 is chosen (issue 14), the password only without
        assert by_css(driver, "#f-password").is_displayed() and not by_css(driver, "#f-tenant_id").is_displayed()
        Select(by_css(driver, "#f-auth")).select_by_visible_text("oauth2")
        wait_for(driver, lambda b: by_css(b, "#f-tenant_id").is_displayed(), "the OAuth fields after auth=oauth2")
        assert by_css(driver, "#f-client_secret").is_displayed() and not by_css(driver, "#f-password").is_displayed()
        Select(by_css(driver, "#f-auth")).select_by_visible_text("password")
        wait_for(driver, lambda b: by_css(b, "#f-password").is_displayed(), "the password field again")
        assert not by_css(driver, "#f-client_id").is_displayed()
        fill(driver, {"description": "Archive mailbox", "server": dovecot.host, "port": str(dovecot.imaps_port),
                      "username": user, "password": "wrong-password", "ca_file": str(dovecot.ca_file)})
        submit(driver)
        wait_for(driver, lambda b: by_css(b, "h1").text == "Connection added", "the imap connection added")
        assert all_css(driver, "#new-address") == []  # a pull connection has no address
        by_css(driver, "#done").click()
        imap = str(next(r for r in all_css(driver, "tbody tr")
                        if r.find_element("css selector", ".description").text == "Archive mailbox").get_attribute("id"))
        assert row_status(driver, imap) == "untested"
        press_test(driver, url, imap)
        failed = wait_for_status(driver, url, imap, "failed")
        icon = failed.find_element("css selector", "span.status")
        assert "failed" in str(icon.get_attribute("class")).split()
        assert icon.value_of_css_property("background-color") in ("rgba(198, 40, 40, 1)", "rgb(198, 40, 40)")
        hover = str(icon.get_attribute("title"))
        assert "authentication failed for user" in hover, hover
        assert "wrong-password" not in driver.page_source  # the secret never reaches the page

    # --- fix the password through Edit; the page reminds to test; Test turns it green -------------
    with screenshot_on_failure(driver, tmp_path, "imap-fixed", console["setup"].server):
        row(driver, imap).find_element("link text", "Edit").click()
        wait_for(driver, lambda b: by_css(b, "h1").text == "Edit Archive mailbox", "the edit form")
        assert by_css(driver, "#f-password").get_attribute("value") == ""  # secrets are never sent back
        fill(driver, {"password": password})
        submit(driver)
        notice = wait_for(driver, lambda b: by_css(b, "p.notice"), "the saved notice").text
        assert "Press Test" in notice and row_status(driver, imap) == "untested"
        press_test(driver, url, imap)
        ok = wait_for_status(driver, url, imap, "ok")
        assert "ok" in str(ok.find_element("css selector", "span.status").get_attribute("class")).split()
        assert ok.find_element("css selector", ".status-text").text == "ok"

    # --- edit: a new description, kept password --------------------------------------------------
    with screenshot_on_failure(driver, tmp_path, "edit", console["setup"].server):
        row(driver, imap).find_element("link text", "Edit").click()
        wait_for(driver, lambda b: by_css(b, "#f-description"), "the edit form")
        fill(driver, {"description": "Archive mailbox (EU)"})
        submit(driver)
        wait_for(driver, lambda b: "saved" in by_css(b, "p.notice").text, "the saved notice")
        assert row(driver, imap).find_element("css selector", ".description").text == "Archive mailbox (EU)"
        press_test(driver, url, imap)  # the unchanged password still works
        wait_for_status(driver, url, imap, "ok")

    # --- delete asks first; Cancel keeps it, Delete removes it --------------------------------------
    with screenshot_on_failure(driver, tmp_path, "delete", console["setup"].server):
        row(driver, imap).find_element("link text", "Delete").click()
        wait_for(driver, lambda b: by_css(b, "h1").text == "Delete Archive mailbox (EU)?", "the confirmation")
        by_css(driver, "form a[href='/']").click()  # Cancel
        wait_for(driver, lambda b: by_css(b, "h1").text == "Connections", "back on the list")
        assert row(driver, imap)
        row(driver, imap).find_element("link text", "Delete").click()
        by_css(driver, "#confirm-delete").click()
        wait_for(driver, lambda b: "Connection deleted." in by_css(b, "p.notice").text, "the deleted notice")
        assert all_css(driver, f"tr[id='{imap}']") == []
        assert row(driver, o365)  # the other one stays


def test_the_list_fits_a_phone(console: dict[str, Any], driver: Any, tmp_path: Path) -> None:
    url, setup = console["url"], console["setup"]
    setup.add("A connection with a rather long description, as operators write them", "smtp_o365",
              enable=False, undeliverable_journal_address=NDR)
    with screenshot_on_failure(driver, tmp_path, "phone", console["setup"].server):
        if "Connections" not in driver.title:
            log_in(driver, url)
        driver.set_window_size(390, 844)
        try:
            driver.get(url + "/")
            wait_for(driver, lambda b: by_css(b, "h1").text == "Connections", "the list")
            width = driver.execute_script("return window.innerWidth")
            assert width <= 500, width  # the phone width took effect
            assert driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
            assert all_css(driver, "tbody tr code.address"), "no push connection shows its address"
            for shown in all_css(driver, "tbody tr"):
                assert shown.is_displayed()
                description = shown.find_element("css selector", ".description")
                assert description.text and description.size["width"] <= width
                # push connections show their unique address; pull ones (imap) have none
                for address in shown.find_elements("css selector", "code.address"):
                    right = driver.execute_script("return arguments[0].getBoundingClientRect().right", address)
                    assert right <= width, "the unique address runs off the screen"
                assert shown.find_element("css selector", "button[role=switch]").is_displayed()
        finally:
            driver.set_window_size(1280, 900)
