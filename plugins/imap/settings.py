"""The settings of the IMAP connection types, their validation, and a typed view.

``imap`` and ``imap_failover`` share every setting here; ``imap_failover``
adds ``backs_up``. Validation refuses anything that could send the password
in clear: mailpipe speaks implicit TLS (IMAPS) only, so there is no setting
that turns TLS off, and port 143 — the plaintext IMAP port, where TLS would
at best be negotiated later with STARTTLS — is refused outright.

Two ways to sign in (``auth``): ``password`` (IMAP LOGIN) and ``oauth2``
(SASL XOAUTH2 with an app-only token of an Entra ID app registration, the
only way into Exchange Online since basic authentication was turned off).
``server`` and ``password`` are therefore not "required" in the schema:
which of them is needed depends on ``auth``, and validation says so.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailpipe.types import Connection, Setting

AFTER_ARCHIVE_CHOICES = ("delete", "move", "seen")
AUTH_CHOICES = ("password", "oauth2")
#: Exchange Online's IMAP endpoint: the server when ``auth=oauth2`` names none.
MICROSOFT_365_IMAP_SERVER = "outlook.office365.com"
#: Entra ID's public-cloud sign-in host; sovereign clouds have their own
#: (login.microsoftonline.us, login.partner.microsoftonline.cn).
DEFAULT_AUTHORITY_HOST = "login.microsoftonline.com"
#: ``applies_when`` of the settings that only mean something with ``auth=oauth2``.
OAUTH2 = ("auth", "oauth2")
#: The settings that only mean something with ``auth=oauth2``.
OAUTH_SETTING_NAMES = (
    "tenant_id",
    "client_id",
    "client_secret",
    "client_certificate",
    "client_certificate_thumbprint",
    "client_certificate_pem",
    "authority_host",
)
PLAINTEXT_IMAP_PORT = 143
DEFAULT_PORT = 993
DEFAULT_POLL_SECONDS = 30
DEFAULT_TIMEOUT_SECONDS = 15
MAX_TIMEOUT_SECONDS = 50  # the core gives a whole test 60 s; ours must answer first

IMAP_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "server",
        "str",
        help=f"host name of the IMAP server (with auth=oauth2 the default is {MICROSOFT_365_IMAP_SERVER})",
    ),
    Setting("port", "int", default=DEFAULT_PORT, help="IMAPS port (implicit TLS); 993 is the standard one"),
    Setting(
        "username",
        "str",
        required=True,
        help="login name of the journaling mailbox (with auth=oauth2: the mailbox's address)",
    ),
    Setting(
        "auth",
        "str",
        default="password",
        choices=AUTH_CHOICES,
        help="how to sign in: password (IMAP LOGIN, default) or oauth2 (Microsoft 365 app-only, XOAUTH2)",
    ),
    Setting("password", "secret", help="password of the mailbox, for auth=password (encrypted at rest)",
            applies_when=("auth", "password")),
    Setting("tenant_id", "str", applies_when=OAUTH2,
            help="auth=oauth2: the Entra ID tenant (directory) id, a GUID or a domain"),
    Setting("client_id", "str", applies_when=OAUTH2,
            help="auth=oauth2: the app registration's application (client) id, a GUID"),
    Setting("client_secret", "secret", applies_when=OAUTH2,
            help="auth=oauth2: a client secret of the app registration (encrypted at rest)"),
    Setting("client_certificate", "path", applies_when=OAUTH2,
            help="auth=oauth2, instead of a secret: PEM file with the app's certificate private key"),
    Setting("client_certificate_thumbprint", "str", applies_when=OAUTH2,
            help="auth=oauth2 with a certificate: its SHA-1 thumbprint as Entra ID shows it (40 hex digits)"),
    Setting("client_certificate_pem", "secret", applies_when=OAUTH2,
            help="auth=oauth2, instead of client_certificate: the private key PEM itself (encrypted at rest)"),
    Setting("authority_host", "str", applies_when=OAUTH2,
            help=f"auth=oauth2: Entra ID sign-in host, {DEFAULT_AUTHORITY_HOST} unless the tenant is in a "
            "sovereign cloud (login.microsoftonline.us) or for a test provider (host:port)"),
    Setting("mailbox", "str", default="INBOX", help="folder to collect from"),
    Setting(
        "after_archive",
        "str",
        default="delete",
        choices=AFTER_ARCHIVE_CHOICES,
        help="what to do with a message once it is safely spooled: delete (default), move, or seen",
    ),
    Setting("move_to", "str", help="folder for after_archive=move"),
    Setting(
        "poll_interval",
        "int",
        default=DEFAULT_POLL_SECONDS,
        help="seconds between checks when the server does not offer IDLE",
    ),
    Setting("ca_file", "path", help="PEM file of the CA that signed the server's certificate"),
    Setting("tls_verify", "bool", default=True, help="check the server's certificate (keep true)"),
    Setting(
        "timeout",
        "int",
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds allowed for connecting and for each IMAP command",
    ),
)

# RFC 1123 host names and IP literals; anything with a scheme, a path or a
# space is a URL pasted into the wrong field.
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_THUMBPRINT = re.compile(r"^[0-9A-Fa-f]{40}$")
_HOST_AND_PORT = re.compile(r"^(?P<host>[^:/\s]+)(:(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class OAuthSettings:
    """What signing in with ``auth=oauth2`` needs; one credential is set:
    ``client_secret`` or a certificate (the PEM in the file
    ``certificate_path``, read when the token source is made, so that the
    operator can rotate it; or stored as ``certificate_pem``)."""

    tenant_id: str
    client_id: str
    authority_host: str
    client_secret: str | None = None
    certificate_pem: str | None = None
    certificate_path: str | None = None
    certificate_thumbprint: str | None = None


@dataclass(frozen=True)
class ImapSettings:
    """A connection's settings, typed, with defaults applied."""

    server: str
    port: int
    username: str
    password: str
    mailbox: str
    after_archive: str
    move_to: str | None
    poll_interval: int
    ca_file: str | None
    tls_verify: bool
    timeout: float
    auth: str = "password"
    oauth: OAuthSettings | None = None

    @classmethod
    def from_connection(cls, connection: Connection) -> "ImapSettings":
        return cls.from_mapping(connection.settings)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "ImapSettings":
        auth = str(values.get("auth") or "password")
        default_server = MICROSOFT_365_IMAP_SERVER if auth == "oauth2" else ""
        return cls(
            server=str(values.get("server") or default_server).strip("[]"),
            port=int(values.get("port") or DEFAULT_PORT),
            username=str(values["username"]),
            password=str(values.get("password") or ""),
            mailbox=str(values.get("mailbox") or "INBOX"),
            after_archive=str(values.get("after_archive") or "delete"),
            move_to=values.get("move_to") or None,
            poll_interval=int(values.get("poll_interval") or DEFAULT_POLL_SECONDS),
            ca_file=values.get("ca_file") or None,
            tls_verify=values.get("tls_verify") is not False,
            timeout=float(values.get("timeout") or DEFAULT_TIMEOUT_SECONDS),
            auth=auth,
            oauth=_oauth_from_mapping(values) if auth == "oauth2" else None,
        )

    @property
    def source_key(self) -> str:
        """Identifies the mailbox a checkpoint belongs to: another server,
        account or folder starts from scratch (content dedup in the sink
        keeps a re-collection from storing anything twice)."""
        return f"{self.username}@{self.server}:{self.port}/{self.mailbox}"


def _oauth_from_mapping(values: dict[str, Any]) -> OAuthSettings:
    return OAuthSettings(
        tenant_id=str(values.get("tenant_id") or ""),
        client_id=str(values.get("client_id") or ""),
        authority_host=str(values.get("authority_host") or DEFAULT_AUTHORITY_HOST),
        client_secret=values.get("client_secret") or None,
        certificate_pem=values.get("client_certificate_pem") or None,
        certificate_path=values.get("client_certificate") or None,
        certificate_thumbprint=values.get("client_certificate_thumbprint") or None,
    )


#: The same words for ``connections show`` (imap_warnings) and ``test`` (the
#: probe), so a test's output does not print the warning twice.
TLS_VERIFY_OFF = "tls_verify is false: the server's certificate is not checked"


def imap_warnings(connection: Connection) -> list[str]:
    """Settings that work but that an operator should know about."""
    return [TLS_VERIFY_OFF] if connection.settings.get("tls_verify") is False else []


def validate_imap_settings(settings: dict[str, Any]) -> list[str]:
    """Problems with the shared IMAP settings; normalises some in place."""
    problems: list[str] = []
    auth = settings.get("auth") or "password"
    if auth == "oauth2":
        problems += validate_oauth_settings(settings)
    else:
        problems += _password_sign_in_problems(settings)
    server = str(settings.get("server") or "").strip()
    if not server:
        problems.append(
            "an IMAP connection needs setting 'server' (host name of the IMAP server); add --set server=HOST"
        )
    elif not _is_host(server):
        problems.append(
            f"server {server!r} is not a host name or IP address; give the bare name, "
            "e.g. imap.example.com (no imaps://, no port, no path)"
        )
    settings["server"] = server

    port = settings.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"port {port!r} must be a number from 1 to 65535 (IMAPS is usually 993)")
    elif port == PLAINTEXT_IMAP_PORT:
        problems.append(
            "port 143 is plaintext IMAP: mailpipe connects with implicit TLS only, so that the "
            "password and the mail never cross the network in clear; use the server's IMAPS "
            "port (usually 993)"
        )

    for name in ("username", "password", "mailbox", "move_to", "tenant_id", "client_id"):
        value = settings.get(name)
        if isinstance(value, str) and _CONTROL.search(value):
            problems.append(f"{name} contains a control character (line break, tab...); remove it")

    if not str(settings.get("mailbox") or "").strip():
        settings["mailbox"] = "INBOX"

    after = settings.get("after_archive", "delete")
    move_to = str(settings.get("move_to") or "").strip()
    if after == "move":
        if not move_to:
            problems.append("after_archive=move needs the folder to move to: add --set move_to=FOLDER")
        elif move_to == settings["mailbox"]:
            problems.append(
                f"move_to {move_to!r} is the mailbox being collected; choose another folder"
            )
    elif move_to:
        problems.append(
            f"move_to is only used with after_archive=move (after_archive is {after!r}); "
            "remove move_to or set after_archive=move"
        )

    poll = settings.get("poll_interval", DEFAULT_POLL_SECONDS)
    if not isinstance(poll, int) or poll < 1:
        problems.append(f"poll_interval {poll!r} must be a whole number of seconds, at least 1")

    timeout = settings.get("timeout", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        problems.append(f"timeout {timeout!r} must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}")

    ca_file = settings.get("ca_file")
    if ca_file:
        problem, resolved = _ca_file_problem(str(ca_file))
        if problem:
            problems.append(problem)
        else:
            settings["ca_file"] = resolved
    return problems


def _password_sign_in_problems(settings: dict[str, Any]) -> list[str]:
    problems = []
    if not settings.get("password"):
        problems.append(
            "auth=password needs setting 'password' (password of the mailbox); add --set password=VALUE "
            "(for Microsoft 365 use --set auth=oauth2 instead: Exchange Online refuses passwords for IMAP)"
        )
    stray = [name for name in OAUTH_SETTING_NAMES if settings.get(name)]
    if stray:
        problems.append(
            f"{', '.join(stray)} only mean something with auth=oauth2 (auth is password); "
            "add --set auth=oauth2 or remove them"
        )
    return problems


def validate_oauth_settings(settings: dict[str, Any]) -> list[str]:
    """``auth=oauth2``: a tenant, an app, exactly one credential, no password.
    Fills ``server`` with Exchange Online's when none is given."""
    problems: list[str] = []
    if settings.get("password"):
        problems.append(
            "password is not used with auth=oauth2 (the app signs in with its client secret or "
            "certificate); remove it with --set password="
        )
    if not str(settings.get("server") or "").strip():
        settings["server"] = MICROSOFT_365_IMAP_SERVER

    tenant = str(settings.get("tenant_id") or "").strip()
    settings["tenant_id"] = tenant
    if not tenant:
        problems.append(
            "auth=oauth2 needs tenant_id: the Directory (tenant) ID shown on the app registration's "
            "Overview page in the Entra admin center (a GUID), or the tenant's domain "
            "(contoso.onmicrosoft.com); add --set tenant_id=VALUE"
        )
    elif not (_is_guid(tenant) or _is_domain(tenant)):
        problems.append(
            f"tenant_id {tenant!r} is neither a GUID (like 72f988bf-86f1-41af-91ab-2d7cd011db47) nor a "
            "domain (like contoso.onmicrosoft.com); copy the Directory (tenant) ID from the app "
            "registration's Overview page"
        )

    client = str(settings.get("client_id") or "").strip()
    settings["client_id"] = client
    if not client:
        problems.append(
            "auth=oauth2 needs client_id: the Application (client) ID shown on the app registration's "
            "Overview page (a GUID); add --set client_id=VALUE"
        )
    elif not _is_guid(client):
        problems.append(
            f"client_id {client!r} is not a GUID; copy the Application (client) ID from the app "
            "registration's Overview page (not the secret's ID, not the object ID's name)"
        )

    problems += _credential_problems(settings)

    authority = str(settings.get("authority_host") or DEFAULT_AUTHORITY_HOST).strip()
    found = _HOST_AND_PORT.match(authority)
    if not found or not _is_host(found.group("host")):
        problems.append(
            f"authority_host {authority!r} is not a host name (optionally host:port); give the bare "
            f"name, e.g. {DEFAULT_AUTHORITY_HOST} (no https://, no tenant, no path)"
        )
    settings["authority_host"] = authority
    return problems


def _credential_problems(settings: dict[str, Any]) -> list[str]:
    secret = settings.get("client_secret")
    certificate = settings.get("client_certificate")
    pem = settings.get("client_certificate_pem")
    thumbprint = str(settings.get("client_certificate_thumbprint") or "").replace(":", "").strip()
    given = [name for name, value in (("client_secret", secret), ("client_certificate", certificate),
                                      ("client_certificate_pem", pem)) if value]
    if not given:
        return [
            "auth=oauth2 needs the app's credential: --set client_secret=VALUE (the secret's Value "
            "from Certificates & secrets, not its ID), or a certificate with --set "
            "client_certificate=PATH --set client_certificate_thumbprint=HEX"
        ]
    if len(given) > 1:
        return [f"give one credential, not {' and '.join(given)}: remove the others (--set NAME=)"]
    if secret:
        if thumbprint:
            return ["client_certificate_thumbprint is only used with a certificate; remove it"]
        return []
    problems = []
    if not _THUMBPRINT.match(thumbprint):
        problems.append(
            "a certificate needs client_certificate_thumbprint: the 40 hex digits Entra ID shows "
            "under Certificates & secrets → Certificates → Thumbprint"
        )
    else:
        settings["client_certificate_thumbprint"] = thumbprint.upper()
    if certificate:
        path = Path(str(certificate)).expanduser().resolve()
        text = path.read_text(errors="replace") if path.is_file() else ""
        if not path.is_file():
            problems.append(f"client_certificate {certificate!r} does not exist or is not a file")
        elif "PRIVATE KEY-----" not in text:
            problems.append(
                f"client_certificate {certificate!r} holds no PEM private key; give the PEM file "
                "with the certificate's private key (BEGIN PRIVATE KEY)"
            )
        else:
            settings["client_certificate"] = str(path)
    elif "PRIVATE KEY-----" not in str(pem):
        problems.append("client_certificate_pem holds no PEM private key (BEGIN PRIVATE KEY)")
    return problems


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def _is_domain(value: str) -> bool:
    return "." in value and bool(_HOST_NAME.match(value)) and not value.replace(".", "").isdigit()


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        return bool(_HOST_NAME.match(value))


def _ca_file_problem(value: str) -> tuple[str | None, str]:
    """The CA file is checked now, so a typo is found at ``add`` and not by
    the collector at night; stored absolute, since ``serve`` may run from
    another directory than the CLI."""
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        return f"ca_file {value!r} does not exist or is not a file; give the path of a PEM file", ""
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as error:
        return f"ca_file {value!r} is not a readable PEM certificate file ({error})", ""
    return None, str(path)
