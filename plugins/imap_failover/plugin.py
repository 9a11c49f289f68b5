"""imap_failover: pull the Office 365 undeliverable journal mailbox.

Same settings, test and collection machinery as ``imap`` (imported from
``mailpipe.plugins.imap``), plus ``backs_up``: the id of the ``smtp_o365``
connection whose undeliverable journal reports land in this mailbox.
Each pulled message goes through ``unwrap.py``. See README.md here.
"""

from __future__ import annotations

import logging
from typing import Any

from mailpipe import hookimpl
from mailpipe.plugins.imap.collector import Collector
from mailpipe.plugins.imap.probe import probe
from mailpipe.plugins.imap.settings import IMAP_SETTINGS, ImapSettings, imap_warnings, validate_imap_settings
from mailpipe.plugins.imap_failover.unwrap import BACKED_UP_TYPE, FailoverDelivery
from mailpipe.types import (
    CollectContext,
    Connection,
    ConnectionType,
    Setting,
    TestResult,
    ValidationContext,
)

TYPE = "imap_failover"
log = logging.getLogger("mailpipe.imap_failover")


@hookimpl
def mailpipe_connection_types() -> list[ConnectionType]:
    return [
        ConnectionType(
            name=TYPE,
            description="Pull the Office 365 undeliverable journal mailbox and archive the "
            "journal reports inside its non-delivery reports",
            receives="pull",
            provenance="imap_failover",
            settings=IMAP_SETTINGS
            + (
                Setting(
                    "backs_up",
                    "str",
                    required=True,
                    help="id of the smtp_o365 connection whose undeliverable reports land here",
                ),
            ),
            validate=validate,
            test=test,
            collect=collect,
            warnings=imap_warnings,
        )
    ]


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    problems = validate_imap_settings(settings)
    backs_up = str(settings.get("backs_up", "")).strip()
    settings["backs_up"] = backs_up
    backed_up = context.find_connection(backs_up)
    if backed_up is None:
        problems.append(
            f"backs_up {backs_up!r} is not a connection; give the id of your smtp_o365 connection "
            "(`mailpipe connections list` shows the ids)"
        )
    elif backed_up.type != BACKED_UP_TYPE:
        problems.append(
            f"backs_up {backs_up!r} is a connection of type {backed_up.type}; imap_failover "
            f"backs up a connection of type {BACKED_UP_TYPE}"
        )
    elif not problems:
        mismatch = username_mismatch(str(settings.get("username", "")), backed_up)
        if mismatch:
            # A warning, not a refusal: the login name of a mailbox need not be its address.
            log.warning(mismatch, extra={"backs_up": backs_up})
    return problems


def username_mismatch(username: str, backed_up: Connection) -> str | None:
    address = str(backed_up.settings.get("undeliverable_journal_address", ""))
    if address and username.strip().lower() != address.lower():
        return (
            f"username {username!r} is not {address!r}, the undeliverable journal address of "
            f"connection {backed_up.id}; make sure this is the mailbox Office 365 sends "
            "undeliverable journal reports to"
        )
    return None


async def test(connection: Connection, context: ValidationContext) -> TestResult:
    backs_up = str(connection.settings.get("backs_up", ""))
    backed_up = context.find_connection(backs_up)
    if backed_up is None or backed_up.type != BACKED_UP_TYPE:
        return TestResult(
            ok=False,
            error=f"backs_up {backs_up!r} is no longer an {BACKED_UP_TYPE} connection; "
            "edit this connection with --set backs_up=ID",
        )
    mismatch = username_mismatch(str(connection.settings.get("username", "")), backed_up)
    return await probe(ImapSettings.from_connection(connection), extra_warnings=(mismatch,) if mismatch else ())


async def collect(connection: Connection, context: CollectContext) -> None:
    backed_up = context.find_connection(str(connection.settings.get("backs_up", "")))
    if backed_up is not None:
        mismatch = username_mismatch(str(connection.settings.get("username", "")), backed_up)
        if mismatch:
            log.warning(mismatch, extra={"connection": connection.id})
    await Collector(connection, context, FailoverDelivery(connection, context).deliver).run()
