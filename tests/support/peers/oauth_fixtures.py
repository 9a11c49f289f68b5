"""pytest fixtures for the Microsoft 365 stand-ins: the OpenID provider and an
OAuth-only Dovecot. Import them into a test module:
``from peers.oauth_fixtures import oauth_provider, oauth_dovecot, mailbox``.

``oauth_provider`` (module)
    a started :class:`peers.oauth_provider.OAuthProvider` on 127.0.0.1
    over TLS (the session ``certs`` CA).
``oauth_dovecot`` (module)
    a started :class:`peers.dovecot_oauth.OAuthDovecot` trusting that
    provider's signing key.
``msal_trusts_provider`` (function)
    ``REQUESTS_CA_BUNDLE`` set to the provider's CA in this process (and so in
    the ``mailpipe`` subprocesses it starts), so msal's real HTTPS client
    verifies the provider's certificate.
``mailbox`` (function)
    a new mailbox on ``oauth_dovecot``.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import pytest

from .certs import CertBundle
from .dovecot import DOVECOT_BINARY, DovecotError
from .dovecot_oauth import OAuthDovecot
from .oauth_provider import OAuthProvider
from .require import peer_missing

__all__ = ["mailbox", "msal_trusts_provider", "oauth_dovecot", "oauth_provider"]

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def oauth_provider(certs: CertBundle) -> Iterator[OAuthProvider]:
    with OAuthProvider(certs) as provider:
        yield provider


@pytest.fixture(scope="module")
def oauth_dovecot(certs: CertBundle, oauth_provider: OAuthProvider) -> Iterator[OAuthDovecot]:
    if not os.path.exists(DOVECOT_BINARY):
        peer_missing(f"{DOVECOT_BINARY} is not installed (Debian: apt-get install dovecot-imapd)")
    if os.geteuid() != 0:
        peer_missing("the Dovecot fixture must run as root (it maps mail to the 'nobody' account)")
    server = OAuthDovecot(oauth_provider, certs)
    try:
        server.start()
    except DovecotError as error:
        server.close()
        peer_missing(f"dovecot did not start: {error}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def msal_trusts_provider(oauth_provider: OAuthProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_provider.ca_file))


@pytest.fixture
def mailbox(oauth_dovecot: OAuthDovecot) -> Iterator[str]:
    if not oauth_dovecot.running:
        oauth_dovecot.start()
    name = f"journal{next(_numbers)}-{secrets.token_hex(3)}@contoso.com"
    oauth_dovecot.add_user(name)
    yield name
    oauth_dovecot.remove_user(name, wait=False)
