"""App-only OAuth 2.0 tokens for IMAP (Microsoft 365), and what their refusals mean.

Exchange Online refuses IMAP LOGIN with a password; a daemon signs in as an
Entra ID app registration instead: client-credentials flow for the scope
``https://outlook.office365.com/.default``, then SASL XOAUTH2 with the access
token (``client.py``). The token comes from ``msal``, Microsoft's maintained
library, rather than hand-made HTTP: it knows the authority's discovery,
certificate assertions and the token cache.

- One msal application per connection credential lives in memory for the
  life of the process (``token_source``): its token cache hands back the
  same token until it is close to expiry (msal renews a token five minutes
  before it expires), and every login — each reconnect — asks it again, so
  a reconnect never uses an expired token. Nothing is written to disk.
- msal blocks (``requests``): it runs in a worker thread, never on the
  event loop the collector and the SMTP server share.
- Tokens and secrets never appear in an error or a log line: errors carry
  Entra ID's error code and description only.

Entra ID's ``AADSTS`` codes and IMAP's bare "AUTHENTICATE failed" are turned
into sentences an Exchange administrator can act on; the code stays in the
text so that it can be searched for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from mailpipe.plugins.imap.settings import DEFAULT_AUTHORITY_HOST, OAuthSettings

#: The resource Exchange Online's IMAP accepts tokens for, and its scope.
IMAP_RESOURCE = "https://outlook.office365.com"
IMAP_SCOPE = f"{IMAP_RESOURCE}/.default"
#: The application permission (app role) IMAP needs in the token.
IMAP_ROLE = "IMAP.AccessAsApp"

_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----",
    re.DOTALL,
)

PERMISSION_STEPS = (
    f"in the app registration add API permission Office 365 Exchange Online → Application "
    f"permissions → {IMAP_ROLE}, then click \"Grant admin consent\""
)


class TokenRequestFailed(Exception):
    """Entra ID (or the way to it) refused a token; the text is for the operator."""


@dataclass(frozen=True)
class Token:
    value: str
    claims: dict[str, Any]


# --- the token source ---------------------------------------------------------------


class TokenSource:
    """One app registration's client-credentials tokens, cached by msal in memory."""

    def __init__(self, oauth: OAuthSettings, http_timeout: float) -> None:
        self.oauth = oauth
        self.http_timeout = http_timeout
        self._app: Any = None
        self._lock = threading.Lock()  # one msal app, built once, used by worker threads

    @property
    def authority(self) -> str:
        return f"https://{self.oauth.authority_host}/{self.oauth.tenant_id}"

    async def token(self) -> Token:
        """A token valid for a while yet: msal's cached one, or a new one."""
        return await anyio.to_thread.run_sync(self._acquire)

    def _acquire(self) -> Token:
        import requests  # msal's own HTTP library

        with self._lock:
            try:
                app = self._application()
                result = app.acquire_token_for_client(scopes=[IMAP_SCOPE])
            except requests.RequestException as error:
                raise TokenRequestFailed(
                    f"cannot reach Entra ID at {self.oauth.authority_host} to get a token: "
                    f"{type(error).__name__}; check the network path (proxy, firewall) to it"
                ) from None
            except ValueError as error:
                # msal raises ValueError when the authority's discovery fails
                # (unknown tenant, wrong host) or a certificate key is unusable.
                self._app = None
                raise TokenRequestFailed(describe_msal_exception(self.oauth, error)) from None
        if "access_token" not in result:
            raise TokenRequestFailed(describe_token_error(self.oauth, result))
        value = str(result["access_token"])
        return Token(value, token_claims(value))

    def _application(self) -> Any:
        if self._app is None:
            import msal

            custom_host = self.oauth.authority_host != DEFAULT_AUTHORITY_HOST
            self._app = msal.ConfidentialClientApplication(
                self.oauth.client_id,
                client_credential=self._credential(),
                authority=self.authority,
                # A sovereign cloud or a test provider is not in Microsoft's
                # instance-discovery list: trust the configured host as given.
                validate_authority=not custom_host,
                instance_discovery=not custom_host,
                timeout=self.http_timeout,
            )
        return self._app

    def _credential(self) -> Any:
        if self.oauth.client_secret:
            return self.oauth.client_secret
        pem = self.oauth.certificate_pem or ""
        if self.oauth.certificate_path:
            try:
                pem = Path(self.oauth.certificate_path).read_text()
            except OSError as error:
                raise TokenRequestFailed(
                    f"client_certificate {self.oauth.certificate_path!r} cannot be read "
                    f"({error.strerror or error}); restore the file or edit the connection"
                ) from None
        # A PEM file often holds the certificate next to its key: msal wants the key alone.
        found = _PRIVATE_KEY_BLOCK.search(pem)
        return {
            "private_key": found.group(0) if found else pem,
            "thumbprint": self.oauth.certificate_thumbprint,
        }


_sources: dict[tuple[str, ...], TokenSource] = {}
_sources_lock = threading.Lock()


def token_source(oauth: OAuthSettings, http_timeout: float) -> TokenSource:
    """The process's token source for this credential, so that reconnects
    share msal's cache. Keyed by a digest of the credential, not by the
    credential itself; an edited secret gets a new source."""
    credential = oauth.client_secret or oauth.certificate_pem or oauth.certificate_path or ""
    key = (
        oauth.authority_host,
        oauth.tenant_id,
        oauth.client_id,
        hashlib.sha256(credential.encode()).hexdigest(),
        oauth.certificate_thumbprint or "",
    )
    with _sources_lock:
        source = _sources.get(key)
        if source is None:
            source = _sources[key] = TokenSource(oauth, http_timeout)
        return source


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, read without checking the signature
    (the IMAP server checks it): only to explain a refusal. ``{}`` when the
    token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


# --- explaining refusals -------------------------------------------------------------------


def _codes(result: dict[str, Any]) -> list[int]:
    codes = [int(code) for code in result.get("error_codes") or [] if str(code).isdigit()]
    description = str(result.get("error_description") or "")
    if description.startswith("AADSTS"):
        digits = description[6:].split(":", 1)[0]
        if digits.isdigit():
            codes.append(int(digits))
    return codes


def describe_token_error(oauth: OAuthSettings, result: dict[str, Any]) -> str:
    """msal's error dict (``error``, ``error_description``, ``error_codes``) → a sentence."""
    codes = _codes(result)
    first_line = str(result.get("error_description") or "").splitlines()[0:1]
    said = f" (Entra ID said: {first_line[0]})" if first_line else ""
    tenant, client = oauth.tenant_id, oauth.client_id
    if 90002 in codes or result.get("error") == "invalid_tenant":
        return (
            f"tenant not found (AADSTS90002): Entra ID knows no tenant {tenant!r}; set tenant_id to the "
            f"Directory (tenant) ID from the app registration's Overview page{said}"
        )
    if 7000222 in codes:
        return (
            f"the client secret has expired (AADSTS7000222): in the app registration {client} create a "
            f"new client secret under Certificates & secrets and set client_secret to its Value{said}"
        )
    if 7000215 in codes:
        return (
            f"invalid client secret (AADSTS7000215): Entra ID refused the secret of app {client}; set "
            "client_secret to the secret's Value (not its Secret ID), or create a new one under "
            f"Certificates & secrets{said}"
        )
    if 700016 in codes:
        return (
            f"application {client} not found in tenant {tenant!r} (AADSTS700016): check client_id "
            f"(Application (client) ID) and that the app is registered in this tenant{said}"
        )
    if any(code in codes for code in (65001, 7000229, 500011, 501051)):
        code = next(code for code in codes if code in (65001, 7000229, 500011, 501051))
        return (
            f"the app has no {IMAP_ROLE} permission or admin consent is missing (AADSTS{code}): "
            f"{PERMISSION_STEPS}{said}"
        )
    if any(code in codes for code in (700027, 700024, 7000274, 7000277)):
        code = next(code for code in codes if code in (700027, 700024, 7000274, 7000277))
        return (
            f"Entra ID refused the app's certificate (AADSTS{code}): upload the certificate under "
            "Certificates & secrets of the app registration and set client_certificate_thumbprint "
            f"to the thumbprint shown there{said}"
        )
    code_text = f"AADSTS{codes[0]}" if codes else str(result.get("error") or "error")
    return f"Entra ID refused a token for app {client} in tenant {tenant!r} ({code_text}){said}"


def describe_msal_exception(oauth: OAuthSettings, error: ValueError) -> str:
    """msal reports a failed tenant discovery as "Unable to get authority
    configuration"; Entra ID's own answer (with its AADSTS code) is in the
    exception it raised that from."""
    text = str(error)
    cause = str(error.__context__ or "")
    if "AADSTS90002" in cause or "invalid_tenant" in cause:
        return describe_token_error(oauth, {"error": "invalid_tenant", "error_codes": [90002]})
    first_line = text.splitlines()[0] if text else type(error).__name__
    if not oauth.client_secret and ("key" in text.lower() or "deserialize" in text.lower()):
        return (
            f"the client certificate's private key cannot be used ({first_line}); give a PEM file "
            "with an unencrypted RSA private key (BEGIN PRIVATE KEY)"
        )
    return (
        f"cannot use the authority https://{oauth.authority_host}/{oauth.tenant_id}: {first_line}; "
        "check tenant_id and authority_host"
    )


def describe_imap_refusal(oauth: OAuthSettings, username: str, claims: dict[str, Any], said: str) -> str:
    """Exchange answers every refused XOAUTH2 with the same "AUTHENTICATE
    failed"; the token's own claims tell the causes apart."""
    roles = claims.get("roles") or []
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    server_said = f" (the server said {said!r})"
    if claims and IMAP_RESOURCE not in audiences and f"{IMAP_RESOURCE}/" not in audiences:
        return (
            f"IMAP refused the token: it was issued for {audience!r}, not for {IMAP_RESOURCE}; "
            f"check authority_host (the sign-in host of the mailbox's cloud){server_said}"
        )
    if claims and IMAP_ROLE not in roles:
        return (
            f"the app has no {IMAP_ROLE} permission or admin consent is missing: its token carries "
            f"no {IMAP_ROLE} role; {PERMISSION_STEPS}{server_said}"
        )
    if claims:
        return (
            f"the service principal of app {oauth.client_id} is not granted the mailbox {username!r}: "
            f"IMAP refused a valid token with the {IMAP_ROLE} role. In Exchange Online PowerShell run "
            f"New-ServicePrincipal -AppId {oauth.client_id} -ObjectId <object id of the enterprise "
            f"application>, then Add-MailboxPermission -Identity {username} -User <that object id> "
            f"-AccessRights FullAccess; check also that username is the mailbox's address{server_said}"
        )
    return f"IMAP refused the token for {username!r}{server_said}"
