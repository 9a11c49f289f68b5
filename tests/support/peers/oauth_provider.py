"""A small local HTTPS OpenID provider that stands in for Entra ID.

Why a stand-in here, and only here: Entra ID cannot run on a test machine,
while everything around it can (msal's real ``ConfidentialClientApplication``
talks to this over real HTTPS; a real Dovecot validates the tokens it signs).
It answers the way Entra ID does for the client-credentials flow:

* ``GET /<tenant>/v2.0/.well-known/openid-configuration`` (msal's tenant
  discovery); an unknown tenant gets Entra ID's 400 ``invalid_tenant`` with
  ``AADSTS90002``;
* ``POST /<tenant>/oauth2/v2.0/token`` with ``grant_type=client_credentials``
  and a client secret or a certificate assertion (``client_assertion``,
  checked against the registered certificate and its ``x5t`` thumbprint);
  errors as Entra ID words them: ``invalid_client`` ``AADSTS7000215`` (wrong
  secret), ``AADSTS7000222`` (expired secret), ``AADSTS700016`` (unknown
  app), ``invalid_grant`` ``AADSTS65001`` (no admin consent);
* access tokens are RS256 JWTs (PyJWT) with the claims of an app-only Exchange
  Online token: ``aud``, ``iss``, ``tid``, ``appid``, ``roles``, ``exp``...;
  their lifetime is ``token_lifetime`` seconds (short in expiry tests).

The one thing a real Entra ID token does not carry: Exchange Online keeps
"which mailboxes may this service principal open" (``Add-MailboxPermission``)
on its side. The test Dovecot cannot look that up, so the provider writes
the mailbox the app was granted into the claim ``GRANT_CLAIM`` and Dovecot
checks it as the token's user name (see :mod:`peers.dovecot_oauth`); an app
without the ``IMAP.AccessAsApp`` role is granted nothing.

Dovecot validates tokens by asking this provider (RFC 7662 introspection,
``POST /introspect``): the provider checks the signature and the expiry and
answers ``active`` with the token's claims; Dovecot checks the audience and
the mailbox. Why not Dovecot 2.3's local JWT validation: its auth process
crashed (signal 11) on every second token carrying ``roles``, ``iss`` and
``appid`` together, as Entra ID's tokens do (observed with 2.3.19.1).

The TLS certificate comes from :mod:`peers.certs`; clients trust
``ca_file`` (msal through ``REQUESTS_CA_BUNDLE`` in the test's environment).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .certs import CertBundle
from .process import LOOPBACK

IMAP_AUDIENCE = "https://outlook.office365.com"
IMAP_ROLE = "IMAP.AccessAsApp"
GRANT_CLAIM = "granted_mailbox"
SIGNING_KEY_ID = "mailpipetestkey1"


@dataclass
class App:
    """An app registration (and its service principal) in the provider's tenant."""

    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None  # public certificate, for client assertions
    certificate_thumbprint: str | None = None  # hex SHA-1, as Entra ID shows it
    roles: tuple[str, ...] = (IMAP_ROLE,)
    consented: bool = True
    secret_expired: bool = False
    granted_mailbox: str = ""
    audience: str = IMAP_AUDIENCE


@dataclass
class IssuedToken:
    client_id: str
    token: str
    expires_at: float


@dataclass
class ProviderState:
    tenant_id: str
    signing_key: rsa.RSAPrivateKey
    apps: dict[str, App] = field(default_factory=dict)
    token_lifetime: int = 3600
    issued: list[IssuedToken] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": SIGNING_KEY_ID})

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662: the claims of a token this provider signed and that has
        not expired, with ``active: true``; else only ``active: false``."""
        try:
            claims = jwt.decode(
                token, self.signing_key.public_key(), algorithms=["RS256"], options={"verify_aud": False}
            )
        except jwt.PyJWTError:
            return {"active": False}
        return {"active": True, **claims}


def _error(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {uuid.uuid4()} Timestamp: 2026-01-01 00:00:00Z",
        "error_codes": [code],
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _tenant(self) -> tuple[str, list[str]]:
        parts = [part for part in urlparse(self.path).path.split("/") if part]
        return (parts[0] if parts else ""), parts[1:]

    def do_GET(self) -> None:
        state = self.server.state
        tenant, rest = self._tenant()
        if rest != ["v2.0", ".well-known", "openid-configuration"]:
            self._send(404, {"error": "not_found"})
            return
        if tenant != state.tenant_id:
            self._send(*_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."))
            return
        base = f"{self.server.url}/{tenant}"
        self._send(
            200,
            {
                "issuer": f"{self.server.url}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "EU",
            },
        )

    def do_POST(self) -> None:
        state = self.server.state
        tenant, rest = self._tenant()
        length = int(self.headers.get("Content-Length") or 0)
        form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
        if tenant == "introspect" and not rest:
            self._send(200, state.introspect(form.get("token", "")))
            return
        if rest != ["oauth2", "v2.0", "token"]:
            self._send(404, {"error": "not_found"})
            return
        if tenant != state.tenant_id:
            self._send(*_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found."))
            return
        self._send(*self._token(state, form))

    def _token(self, state: ProviderState, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        app = state.apps.get(form.get("client_id", ""))
        if app is None:
            return _error(
                400, "unauthorized_client", 700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the directory.",
            )
        problem = self._credential_problem(app, form)
        if problem:
            return problem
        if not app.consented:
            return _error(
                400, "invalid_grant", 65001,
                "The user or administrator has not consented to use the application.",
            )
        if form.get("scope") != f"{IMAP_AUDIENCE}/.default":
            return _error(400, "invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} is not valid.")
        now = int(time.time())
        lifetime = state.token_lifetime
        claims = {
            "aud": app.audience,
            "iss": f"https://sts.windows.net/{state.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": state.tenant_id,
            "appid": app.client_id,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, app.client_id)),
            "idtyp": "app",
            "ver": "1.0",
            GRANT_CLAIM: app.granted_mailbox if IMAP_ROLE in app.roles else "",
        }
        if app.roles:
            claims["roles"] = list(app.roles)
        token = state.sign(claims)
        with state.lock:
            state.issued.append(IssuedToken(app.client_id, token, now + lifetime))
        return 200, {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    @staticmethod
    def _credential_problem(app: App, form: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        assertion = form.get("client_assertion")
        if assertion is not None:
            return _assertion_problem(app, assertion)
        if app.secret is None or not secrets.compare_digest(form.get("client_secret", ""), app.secret):
            return _error(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                "client secret value, not the client secret ID.",
            )
        if app.secret_expired:
            return _error(
                401, "invalid_client", 7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired.",
            )
        return None


def _assertion_problem(app: App, assertion: str) -> tuple[int, dict[str, Any]] | None:
    refused = _error(
        401, "invalid_client", 700027,
        "The certificate with identifier used to sign the client assertion is not registered on application.",
    )
    if app.certificate_pem is None or app.certificate_thumbprint is None:
        return refused
    header = jwt.get_unverified_header(assertion)
    x5t = header.get("x5t", "")
    thumbprint = base64.urlsafe_b64decode(x5t + "=" * (-len(x5t) % 4)).hex().upper() if x5t else ""
    if thumbprint != app.certificate_thumbprint.upper():
        return refused
    certificate = x509.load_pem_x509_certificate(app.certificate_pem)
    try:
        jwt.decode(assertion, certificate.public_key(), algorithms=["RS256", "PS256"], options={"verify_aud": False})
    except jwt.PyJWTError:
        return refused
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ProviderState
    url: str


class OAuthProvider:
    """The provider on 127.0.0.1 over TLS; ``with OAuthProvider(certs) as p:``."""

    def __init__(self, certs: CertBundle, tenant_id: str | None = None) -> None:
        self.certs = certs
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.state = ProviderState(tenant_id=tenant_id or str(uuid.uuid4()), signing_key=key)
        self._server = _Server((LOOPBACK, 0), _Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certs.cert_file), str(certs.key_file))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.state = self.state
        self._server.url = f"https://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth-provider", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def authority_host(self) -> str:
        """What mailpipe's ``authority_host`` setting takes: host:port."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def tenant_id(self) -> str:
        return self.state.tenant_id

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def introspection_url(self) -> str:
        return f"{self._server.url}/introspect"

    def register(self, granted_mailbox: str = "", **options: Any) -> App:
        """A new app registration (random client id and secret unless given)."""
        options.setdefault("secret", secrets.token_urlsafe(30))
        app = App(client_id=str(uuid.uuid4()), granted_mailbox=granted_mailbox, **options)
        self.state.apps[app.client_id] = app
        return app

    def register_with_certificate(self, granted_mailbox: str, directory: Path) -> tuple[App, Path]:
        """An app whose credential is a certificate; returns it and the PEM
        file holding the private key (what mailpipe's client_certificate takes)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "mailpipe test app")])
        now = time.time()
        import datetime

        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 60, datetime.timezone.utc))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.timezone.utc))
            .sign(key, hashes.SHA256())
        )
        certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        thumbprint = hashlib.sha1(certificate.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
        key_file = directory / f"app-{thumbprint[:8]}.pem"
        key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            + certificate_pem
        )
        app = self.register(
            granted_mailbox, secret=None, certificate_pem=certificate_pem, certificate_thumbprint=thumbprint
        )
        return app, key_file

    def mint(self, granted_mailbox: str, lifetime: int = 300) -> str:
        """A valid token for the test's own IMAP sessions (appending, reading back)."""
        now = int(time.time())
        claims = {
            "aud": IMAP_AUDIENCE, "iss": f"https://sts.windows.net/{self.tenant_id}/", "iat": now, "nbf": now,
            "exp": now + lifetime, "roles": [IMAP_ROLE], GRANT_CLAIM: granted_mailbox, "appid": "test-harness", "sub": "test-harness",
        }
        return self.state.sign(claims)

    def issued(self, client_id: str | None = None) -> list[IssuedToken]:
        with self.state.lock:
            return [t for t in self.state.issued if client_id is None or t.client_id == client_id]

    def start(self) -> "OAuthProvider":
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "OAuthProvider":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
