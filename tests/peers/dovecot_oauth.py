"""A private Dovecot that signs in with OAuth 2.0 tokens only, like Exchange Online.

The same instance as :class:`peers.dovecot.Dovecot` (ports, mail, users,
outages), with authentication replaced:

* ``auth_mechanisms = xoauth2 oauthbearer`` and one passdb, Dovecot 2.3's
  ``oauth2`` driver: LOGIN and AUTHENTICATE PLAIN are impossible (Dovecot
  advertises ``LOGINDISABLED``); a password gets nowhere;
* tokens are validated locally (``introspection_mode = local``): the RS256
  public key of the test provider (:mod:`peers.oauth_provider`) sits in a
  ``fs:posix`` dictionary under ``keys/<azp or default>/<ALG>/<kid>``, the
  layout Dovecot's documentation gives for ``local_validation_key_dict``;
  Dovecot checks the signature, ``exp``/``nbf``/``iat``, and the audience
  (``aud`` must be ``https://outlook.office365.com``; as ``active_attribute``,
  since 2.3's ``scope`` wants a ``scope`` claim app-only tokens lack);
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
from pathlib import Path
from typing import Any

from .dovecot import Dovecot
from .oauth_provider import GRANT_CLAIM, IMAP_AUDIENCE, SIGNING_KEY_ID, OAuthProvider
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
        self.keys_dir = self.directory / "keys"
        key_file = self.keys_dir / "default" / "RS256" / SIGNING_KEY_ID
        key_file.parent.mkdir(parents=True)
        key_file.write_bytes(provider.public_key_pem())
        for path in (self.keys_dir, self.keys_dir / "default", key_file.parent):
            os.chmod(path, 0o755)
        os.chmod(key_file, 0o644)
        self.oauth2_config = self.directory / "dovecot-oauth2.conf.ext"
        self.oauth2_config.write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={self.keys_dir}/\n"
            # Dovecot 2.3's local validation matches "scope" against a scope
            # claim, which Entra ID's app-only tokens do not have: the
            # audience is checked as the "active" attribute instead.
            "active_attribute = aud\n"
            f"active_value = {IMAP_AUDIENCE}\n"
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


def keys_layout(dovecot: OAuthDovecot) -> list[Path]:
    """The files of the validation key dictionary (for error messages)."""
    return sorted(p for p in dovecot.keys_dir.rglob("*") if p.is_file())
