"""Microsoft 365 sign-in (auth=oauth2): msal's real client-credentials flow
against a local HTTPS OpenID provider, SASL XOAUTH2 against a real Dovecot
that accepts tokens only.

The provider (tests/support/peers/oauth_provider.py) is the one stand-in: Entra ID
cannot run here. Dovecot validates its RS256 tokens with the key the test
generated, and refuses passwords altogether.
"""

from __future__ import annotations

import asyncio
import imaplib
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.support.helpers import ServerProcess, cli, wait_until
from tests.support.imap import add_connection_with, archived, bulk_append, make_message, sha256
from tests.support.journal_samples import build_exchange_report, build_ndr
from tests.support.peers.dovecot import Dovecot
from tests.support.peers.dovecot_oauth import OAuthDovecot
from tests.support.peers.oauth_fixtures import mailbox, msal_trusts_provider, oauth_dovecot, oauth_provider  # noqa: F401
from tests.support.peers.oauth_provider import App, OAuthProvider

from mailpipe.plugins.imap.probe import probe
from mailpipe.plugins.imap.settings import ImapSettings
from mailpipe.types import TestResult

pytestmark = [pytest.mark.peer, pytest.mark.usefixtures("msal_trusts_provider")]

WAIT = 30.0  # bounds only: a broken build fails instead of hanging
TENANT_DOMAIN = "contoso.onmicrosoft.com"


def oauth_settings(
    provider: OAuthProvider, dovecot: OAuthDovecot, app: App, username: str, **overrides: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "auth": "oauth2",
        "server": dovecot.host,
        "port": dovecot.imaps_port,
        "username": username,
        "tenant_id": provider.tenant_id,
        "client_id": app.client_id,
        "authority_host": provider.authority_host,
        "ca_file": str(dovecot.ca_file),
    }
    if app.secret is not None:
        values["client_secret"] = app.secret
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def add_oauth_connection(config: Path, connection_type: str = "imap", enable: bool = True, **values: Any) -> str:
    return add_connection_with(config, connection_type, values, enable, f"o365 {connection_type}")


def run_probe(values: dict[str, Any]) -> TestResult:
    return asyncio.run(probe(ImapSettings.from_mapping(values)))


def assert_nowhere_in_clear(secrets: list[str], config: Path, outputs: list[str]) -> None:
    for path in (config.parent / "data").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in content, f"a secret in clear in {path}"
    for output in outputs:
        for secret in secrets:
            assert secret not in output, "a secret in clear in the output"
    for process in psutil.process_iter(["cmdline"]):
        command_line = " ".join(process.info.get("cmdline") or [])
        for secret in secrets:
            assert secret not in command_line, f"a secret in clear in ps output: pid {process.pid}"


# --- the peers themselves ---------------------------------------------------------------


def test_dovecot_takes_tokens_and_no_password(oauth_dovecot: OAuthDovecot, oauth_provider: OAuthProvider,
                                              mailbox: str) -> None:
    client = imaplib.IMAP4_SSL(oauth_dovecot.host, oauth_dovecot.imaps_port, ssl_context=oauth_dovecot.ssl_context())
    try:
        assert "LOGINDISABLED" in client.capabilities and "AUTH=XOAUTH2" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            client.login(mailbox, oauth_dovecot.password(mailbox))
    finally:
        client.shutdown()
    assert oauth_dovecot.xoauth2_accepts(mailbox, oauth_provider.mint(mailbox))
    assert not oauth_dovecot.xoauth2_accepts(mailbox, oauth_provider.mint("someone-else@contoso.com"))


# --- settings ----------------------------------------------------------------------------


def test_settings_explain_each_mistake_and_default_the_server(config_path: Path) -> None:
    tenant, client = str(uuid.uuid4()), str(uuid.uuid4())
    base = ["auth=oauth2", "username=journal@contoso.com", f"tenant_id={tenant}", f"client_id={client}"]

    def add(*settings: str) -> Any:
        args = ["connections", "add", "imap", "--description", "t"]
        for setting in settings:
            args += ["--set", setting]
        return cli(config_path, *args)

    cases = {
        ("tenant_id=not a tenant",): "is neither a GUID",
        ("client_id=contoso-app",): "is not a GUID",
        (): "needs the app's credential",
        ("client_secret=abc", "password=hunter2"): "password is not used with auth=oauth2",
        ("client_secret=abc", "client_certificate_pem=-----BEGIN PRIVATE KEY-----"): "give one credential",
        ("client_certificate=/nonexistent.pem", "client_certificate_thumbprint=" + "A" * 40): "does not exist",
        ("client_certificate_pem=-----BEGIN PRIVATE KEY-----x",): "client_certificate_thumbprint",
        ("client_secret=abc", "authority_host=https://login.microsoftonline.com/x"): "authority_host",
    }
    for settings, expected in cases.items():
        result = add(*base, *settings)
        assert result.code != 0 and expected in result.err, (settings, result)
    missing_tenant = add("auth=oauth2", "username=journal@contoso.com", f"client_id={client}", "client_secret=abc")
    assert missing_tenant.code != 0 and "needs tenant_id" in missing_tenant.err
    no_password = add("server=imap.example.com", "username=journal@example.com")
    assert no_password.code != 0 and "auth=password needs setting 'password'" in no_password.err
    stray = add("server=imap.example.com", "username=j@example.com", "password=x", f"tenant_id={tenant}")
    assert stray.code != 0 and "only mean something with auth=oauth2" in stray.err

    secret = f"Sec~{uuid.uuid4().hex}"
    added = add(*base, f"tenant_id={TENANT_DOMAIN}", f"client_secret={secret}")
    assert added.code == 0, added
    settings = added.json["settings"]
    assert settings["server"] == "outlook.office365.com" and settings["port"] == 993
    assert settings["tenant_id"] == TENANT_DOMAIN
    assert settings["client_secret"] == "********" and settings["authority_host"] == "login.microsoftonline.com"
    shown = cli(config_path, "connections", "show", added.json["id"], check=True)
    listed = cli(config_path, "connections", "list", check=True)
    assert_nowhere_in_clear([secret], config_path, [added.out, added.err, shown.out, listed.out])


# --- collection end to end --------------------------------------------------------------


def test_imap_collects_with_a_token_and_never_shows_the_secret(
    tmp_path: Path, config_path: Path, oauth_provider: OAuthProvider, oauth_dovecot: OAuthDovecot, mailbox: str
) -> None:
    app = oauth_provider.register(granted_mailbox=mailbox)
    messages = [make_message(n) for n in range(12)]
    bulk_append(oauth_dovecot, mailbox, messages)
    connection_id = add_oauth_connection(config_path, **oauth_settings(oauth_provider, oauth_dovecot, app, mailbox))
    tested = cli(config_path, "connections", "test", connection_id)
    assert tested.code == 0, tested
    archive = tmp_path / "archive"
    with ServerProcess(config_path) as server:
        wait_until(lambda: len(archived(archive, connection_id)) == len(messages), WAIT)
        wait_until(lambda: oauth_dovecot.uids(mailbox) == [], WAIT, message="after_archive=delete left mail")
        assert_nowhere_in_clear([app.secret], config_path, [tested.out, tested.err])
        logs = "\n".join(server.lines)
    assert {sha256(m) for m in messages} == set(archived(archive, connection_id))
    tokens = [issued.token for issued in oauth_provider.issued(app.client_id)]
    assert tokens, "msal never asked the provider for a token"
    assert_nowhere_in_clear([app.secret, *tokens], config_path, [logs])


def test_failover_collects_with_a_token(
    tmp_path: Path, config_path: Path, oauth_provider: OAuthProvider, oauth_dovecot: OAuthDovecot, mailbox: str
) -> None:
    app = oauth_provider.register(granted_mailbox=mailbox)
    o365 = cli(config_path, "connections", "add", "smtp_o365", "--description", "o365",
               "--set", f"undeliverable_journal_address={mailbox}", check=True).json
    cli(config_path, "connections", "enable", o365["id"], check=True)
    values = oauth_settings(oauth_provider, oauth_dovecot, app, mailbox, server=None)
    values["server"] = oauth_dovecot.host
    failover_id = add_oauth_connection(config_path, "imap_failover", backs_up=o365["id"], **values)
    report = build_exchange_report("alice@contoso.com", (("To", "bob@contoso.com"),), subject="Q4",
                                   message_id="<q4@contoso.com>")
    unrelated = make_message(1, subject="not an NDR")
    bulk_append(oauth_dovecot, mailbox, [build_ndr(report), unrelated])
    archive = tmp_path / "archive"
    with ServerProcess(config_path):
        wait_until(lambda: len(archived(archive, o365["id"])) == 1 and len(archived(archive, failover_id)) == 1,
                   WAIT, message="failover did not archive both messages")
    assert set(archived(archive, o365["id"])) == {sha256(report)}
    assert set(archived(archive, failover_id)) == {sha256(unrelated)}


def test_an_expired_token_is_renewed_without_losing_or_duplicating_mail(
    tmp_path: Path, config_path: Path, oauth_provider: OAuthProvider, oauth_dovecot: OAuthDovecot, mailbox: str
) -> None:
    app = oauth_provider.register(granted_mailbox=mailbox)
    oauth_provider.state.token_lifetime = 5
    try:
        first_batch = [make_message(n, subject="before expiry") for n in range(15)]
        second_batch = [make_message(n, subject="after expiry") for n in range(15)]
        bulk_append(oauth_dovecot, mailbox, first_batch)
        connection_id = add_oauth_connection(
            config_path, **oauth_settings(oauth_provider, oauth_dovecot, app, mailbox, poll_interval=1)
        )
        archive = tmp_path / "archive"
        with ServerProcess(config_path):
            wait_until(lambda: len(archived(archive, connection_id)) == len(first_batch), WAIT)
            (first, *_) = oauth_provider.issued(app.client_id)
            wait_until(lambda: time.time() > first.expires_at + 1, WAIT)
            # The token the session signed in with is now refused by the server...
            assert not oauth_dovecot.xoauth2_accepts(mailbox, first.token)
            # ...the session ends (as sessions do), the collector signs in again,
            # and mail that came meanwhile is collected with a new token.
            oauth_dovecot.drop_connections()
            bulk_append(oauth_dovecot, mailbox, second_batch)
            wait_until(lambda: len(archived(archive, connection_id)) == len(first_batch) + len(second_batch), WAIT)
            wait_until(lambda: oauth_dovecot.uids(mailbox) == [], WAIT)
        stored = archived(archive, connection_id)
        assert set(stored) == {sha256(m) for m in first_batch + second_batch}
        assert all(len(metadata["arrivals"]) == 1 for _, metadata in stored.values()), "a message came twice"
        assert len(oauth_provider.issued(app.client_id)) >= 2, "no new token after expiry"
    finally:
        oauth_provider.state.token_lifetime = 3600


# --- the test hook names each cause -----------------------------------------------------------


def test_the_test_hook_names_each_cause(
    tmp_path: Path, oauth_provider: OAuthProvider, oauth_dovecot: OAuthDovecot, mailbox: str
) -> None:
    def settings_for(app: App, **overrides: Any) -> dict[str, Any]:
        return oauth_settings(oauth_provider, oauth_dovecot, app, mailbox, **overrides)

    good = oauth_provider.register(granted_mailbox=mailbox)
    ok = run_probe(settings_for(good))
    assert ok.ok, ok
    assert ok.details["auth"] == "oauth2"

    certificate_app, key_file = oauth_provider.register_with_certificate(mailbox, tmp_path)
    with_certificate = run_probe(settings_for(
        certificate_app, client_certificate=str(key_file),
        client_certificate_thumbprint=certificate_app.certificate_thumbprint,
    ))
    assert with_certificate.ok, with_certificate

    unknown_tenant = str(uuid.uuid4())
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (settings_for(good, tenant_id=unknown_tenant), ("tenant not found (AADSTS90002)", unknown_tenant)),
        (settings_for(good, client_secret="not-the-secret"),
         ("invalid client secret (AADSTS7000215)", "Value (not its Secret ID)")),
        (settings_for(oauth_provider.register(granted_mailbox=mailbox, secret_expired=True)),
         ("client secret has expired (AADSTS7000222)",)),
        (settings_for(good, client_id=str(uuid.uuid4())), ("not found in tenant", "AADSTS700016")),
        (settings_for(oauth_provider.register(granted_mailbox=mailbox, consented=False)),
         ("no IMAP.AccessAsApp permission or admin consent is missing (AADSTS65001)", "Grant admin consent")),
        (settings_for(oauth_provider.register(granted_mailbox=mailbox, roles=())),
         ("no IMAP.AccessAsApp permission or admin consent is missing", "carries no IMAP.AccessAsApp role")),
        (settings_for(oauth_provider.register(granted_mailbox="someone-else@contoso.com")),
         ("is not granted the mailbox", "Add-MailboxPermission", "New-ServicePrincipal", mailbox)),
        (settings_for(oauth_provider.register(granted_mailbox=mailbox, audience="https://graph.microsoft.com")),
         ("IMAP refused the token", "https://graph.microsoft.com")),
    ]
    for values, expected in cases:
        result = run_probe(values)
        assert not result.ok, values
        for words in expected:
            assert words in (result.error or ""), (words, result.error)
        for secret in (values.get("client_secret"), *(t.token for t in oauth_provider.issued())):
            assert not secret or secret not in (result.error or "")


def test_the_cli_test_names_the_cause_without_the_secret(
    config_path: Path, oauth_provider: OAuthProvider, oauth_dovecot: OAuthDovecot, mailbox: str
) -> None:
    app = oauth_provider.register(granted_mailbox=mailbox)
    wrong = f"Wrong~{uuid.uuid4().hex}"
    connection_id = add_oauth_connection(
        config_path, enable=False,
        **oauth_settings(oauth_provider, oauth_dovecot, app, mailbox, client_secret=wrong),
    )
    result = cli(config_path, "connections", "test", connection_id)
    assert result.code != 0
    assert "invalid client secret (AADSTS7000215)" in result.out + result.err
    assert_nowhere_in_clear([wrong, app.secret or ""], config_path, [result.out, result.err])


def test_a_server_without_xoauth2_is_named(dovecot: Dovecot, oauth_provider: OAuthProvider) -> None:
    """The password-only Dovecot: no token is asked for, the missing mechanism is named."""
    app = oauth_provider.register(granted_mailbox="journal@contoso.com")
    before = len(oauth_provider.issued(app.client_id))
    result = run_probe(oauth_settings(oauth_provider, dovecot, app, "journal@contoso.com"))  # type: ignore[arg-type]
    assert not result.ok
    assert "does not offer AUTHENTICATE XOAUTH2" in (result.error or "")
    assert len(oauth_provider.issued(app.client_id)) == before


def test_a_certificate_file_is_checked_and_stored_absolute(config_path: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "app.pem"
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    not_a_key = tmp_path / "cert-only.pem"
    not_a_key.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    base = ["--set", "auth=oauth2", "--set", "username=journal@contoso.com", "--set", f"tenant_id={uuid.uuid4()}",
            "--set", f"client_id={uuid.uuid4()}", "--set", "client_certificate_thumbprint=" + "ab" * 20]
    refused = cli(config_path, "connections", "add", "imap", "--description", "t", *base,
                  "--set", f"client_certificate={not_a_key}")
    assert refused.code != 0 and "holds no PEM private key" in refused.err
    added = cli(config_path, "connections", "add", "imap", "--description", "t", *base,
                "--set", f"client_certificate={key_file}", check=True)
    assert added.json["settings"]["client_certificate"] == str(key_file.resolve())
    assert added.json["settings"]["client_certificate_thumbprint"] == "AB" * 20


def test_an_unreadable_certificate_file_is_named(tmp_path: Path) -> None:
    from mailpipe.plugins.imap.oauth import TokenRequestFailed, TokenSource
    from mailpipe.plugins.imap.settings import OAuthSettings

    missing = tmp_path / "gone.pem"
    source = TokenSource(OAuthSettings(str(uuid.uuid4()), str(uuid.uuid4()), "login.microsoftonline.com",
                                       certificate_path=str(missing), certificate_thumbprint="AB" * 20), 5)
    with pytest.raises(TokenRequestFailed, match="cannot be read"):
        asyncio.run(source.token())
