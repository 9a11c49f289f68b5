"""smtp_o365: Office 365 journals to a unique address mailpipe generates.

Settings: ``undeliverable_journal_address`` — a mailbox on the customer's
domain where Office 365 sends journal reports it could not deliver; it is
also the MAIL FROM of the journal reports. When ``[smtp] accepted_domains``
is set, the address must be on one of those domains.
"""

from __future__ import annotations

from typing import Any

from mailpipe import hookimpl
from mailpipe.plugins.smtp_common import disabled_decision, mailbox_problem
from mailpipe.types import Connection, ConnectionType, Decision, Envelope, Setting, TestResult, ValidationContext

TYPE = "smtp_o365"


@hookimpl
def mailpipe_connection_types() -> list[ConnectionType]:
    return [
        ConnectionType(
            name=TYPE,
            description="Office 365 journaling over SMTP to a generated unique address",
            receives="smtp",
            provenance="smtp",
            settings=(
                Setting(
                    "undeliverable_journal_address",
                    "address",
                    required=True,
                    help="mailbox on your domain for undeliverable journal reports",
                ),
            ),
            validate=validate,
            accept=accept,
            test=test,
        )
    ]


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    address = str(settings["undeliverable_journal_address"]).strip()
    problem = mailbox_problem(address)
    if problem:
        return [f"undeliverable_journal_address {address!r} {problem}"]
    domain = address.rsplit("@", 1)[1].lower()
    if context.accepted_domains and domain not in context.accepted_domains:
        allowed = ", ".join(context.accepted_domains)
        return [
            f"undeliverable_journal_address {address!r} is not on one of your accepted domains "
            f"({allowed}); use a mailbox on one of them"
        ]
    settings["undeliverable_journal_address"] = address
    return []


def accept(connection: Connection, envelope: Envelope) -> Decision:
    if not connection.enabled:
        return disabled_decision(connection)
    return Decision.accept()


def test(connection: Connection, context: ValidationContext) -> TestResult:
    if not connection.enabled:
        return TestResult(
            ok=True,
            warnings=("the connection is disabled: journal reports sent to it are refused until you enable it",),
        )
    return TestResult(ok=True, details={"address": connection.address})
