"""One network read with thousands of IMAP responses does not break the session.

aioimaplib's own reader recursed once per line of a read; an expunge of
3,000 messages answers with 3,000 ``* n EXPUNGE`` lines, far beyond
Python's default recursion limit of 1,000, which mailpipe no longer raises
(the reader in mailpipe.plugins.imap.aioimaplib_compat is a loop).
"""

from __future__ import annotations

import asyncio
import sys

from tests.support.imap import bulk_append
from tests.support.peers.dovecot import Dovecot

from mailpipe.plugins.imap.client import ImapSession
from mailpipe.plugins.imap.settings import ImapSettings

COUNT = 3000


def test_expunging_thousands_of_messages_at_once(dovecot: Dovecot, fresh_imap_user: tuple[str, str]) -> None:
    assert sys.getrecursionlimit() <= 1000, "the test must run at Python's default recursion limit"
    user, password = fresh_imap_user
    bulk_append(dovecot, user, (b"Subject: %d\r\n\r\nx\r\n" % n for n in range(COUNT)))
    settings = ImapSettings.from_mapping(
        {"server": dovecot.host, "port": dovecot.imaps_port, "username": user, "password": password,
         "ca_file": str(dovecot.ca_file)}
    )

    async def expunge_all() -> list[int]:
        session = await ImapSession.open(settings)
        try:
            await session.login()
            await session.select()
            uids = await session.search_uids(1)
            assert len(uids) == COUNT
            await session.delete(uids)
            return await session.search_uids(1)
        finally:
            await session.aclose()

    assert asyncio.run(expunge_all()) == []
    assert dovecot.uids(user) == []
