"""What the two SMTP connection types share."""

from __future__ import annotations

import re

from mailpipe.types import Connection, Decision, Verdict

# RFC 5321 mailbox, dot-atom local part (quoted local parts are not used for
# journal mailboxes); the domain needs at least one dot.
_MAILBOX = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)

def mailbox_problem(address: str) -> str | None:
    if "@" not in address:
        return "is not an email address (no @)"
    if not _MAILBOX.match(address):
        return "is not a valid mailbox address (expected local-part@domain.tld)"
    return None


def disabled_decision(connection: Connection) -> Decision:
    """A temporary refusal, so the sender keeps the journal report queued.

    The listener turns it into ``550 5.7.1`` when the operator set
    ``[smtp] disabled_reply = "reject"`` (it sees ``reason="disabled"``).
    """
    return Decision(
        Verdict.DENYSOFT, 451, "4.7.1 this journaling connection is disabled; try again later", "disabled"
    )
