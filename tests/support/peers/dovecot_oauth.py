"""A private Dovecot that signs in with OAuth 2.0 tokens only, like Exchange Online.

The same instance as :class:`peers.dovecot.Dovecot` (ports, mail, users,
outages), with authentication replaced:

* ``auth_mechanisms = xoauth2 oauthbearer`` and one passdb, Dovecot 2.3's
  ``oauth2`` driver: LOGIN and AUTHENTICATE PLAIN are impossible (Dovecot
  advertises ``LOGINDISABLED``); a password gets nowhere;
* tokens are checked by introspection at the test provider
  (``introspection_mode = post``, RFC 7662; the provider checks signature
  and expiry, see :mod:`peers.oauth_provider` for why not Dovecot's local
  JWT validation), over HTTPS verified against the test CA; Dovecot then
  requires ``active`` to be true and the audience (``scope``) to be
  ``https://outlook.office365.com``;
* the token's user is the provider's ``granted_mailbox`` claim, which must be
  the mailbox named in XOAUTH2's ``user=``: the stand-in for Exchange's
  ``Add-MailboxPermission`` (see the provider's docstring);
* users still come from the per-user passwd-files (the userdb), so
  :meth:`add_user` creates mailboxes as before; their passwords are unused.

The test's own sessions (:meth:`session`, used by ``append``, ``uids``,
``fetch_all``...) authenticate with XOAUTH2 and a token the provider mints.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
from collections.abc import Iterator
from typing import Any

from .dovecot import Dovecot
from .oauth_provider import GRANT_CLAIM, IMAP_AUDIENCE, OAuthProvider
from .process import LOOPBACK

_PASSWORD_AUTH = """\
auth_mechanisms = plain login
# Wrong-password tests must not slow down the logins after them.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users_dir}/%u
}}
"""


class OAuthDovecot(Dovecot):
    """:class:`Dovecot` accepting only XOAUTH2/OAUTHBEARER tokens of ``provider``."""

    def __init__(self, provider: OAuthProvider, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.provider = provider
        # Dovecot's auth process runs unprivileged: it reads the CA from here.
        provider_ca = self.directory / "provider-ca.pem"
        provider_ca.write_bytes(provider.ca_file.read_bytes())
        os.chmod(provider_ca, 0o644)
        self.oauth2_config = self.directory / "dovecot-oauth2.conf.ext"
        self.oauth2_config.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {provider.introspection_url}\n"
            f"tls_ca_cert_file = {provider_ca}\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"scope = {IMAP_AUDIENCE}\n"
            f"username_attribute = {GRANT_CLAIM}\n"
            "username_format = %Lu\n"
        )
        os.chmod(self.oauth2_config, 0o644)

    def _config_text(self) -> str:
        password_auth = _PASSWORD_AUTH.format(users_dir=self.users_dir)
        text = super()._config_text()
        if password_auth not in text:
            raise RuntimeError("peers.dovecot's authentication section changed; update peers.dovecot_oauth")
        return text.replace(
            password_auth,
            f"""\
auth_mechanisms = xoauth2 oauthbearer
auth_failure_delay = 0
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2_config}
}}
""",
        )

    @contextlib.contextmanager
    def session(self, user: str, password: str | None = None) -> Iterator[imaplib.IMAP4_SSL]:
        """A session of the test's own, signed in with a freshly minted token."""
        client = imaplib.IMAP4_SSL(LOOPBACK, self.imaps_port, ssl_context=self.ssl_context(), timeout=30)
        try:
            token = self.provider.mint(user)
            client.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def xoauth2_accepts(self, user: str, token: str) -> bool:
        """Whether Dovecot takes this token for this mailbox now."""
        client = imaplib.IMAP4_SSL(LOOPBACK, self.imaps_port, ssl_context=self.ssl_context(), timeout=30)
        try:
            client.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
            return True
        except imaplib.IMAP4.error:
            return False
        finally:
            with contextlib.suppress(Exception):
                client.logout()
