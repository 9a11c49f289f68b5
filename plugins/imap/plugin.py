"""imap: mailpipe logs in to a journaling mailbox over implicit TLS and pulls.

The registration only names the callables; the work lives beside this file:
``settings.py`` (schema, validation), ``probe.py`` (the test),
``collector.py`` (incremental, crash-safe collection), ``client.py``
(the guarded aioimaplib session). See README.md in this folder.
"""

from __future__ import annotations

from typing import Any

from mailpipe import hookimpl
from mailpipe.plugins.imap.collector import Collector, FetchedMessage, batch_spooler, spool_as_is
from mailpipe.plugins.imap.probe import probe
from mailpipe.plugins.imap.settings import IMAP_SETTINGS, ImapSettings, imap_warnings, validate_imap_settings
from mailpipe.types import CollectContext, Connection, ConnectionType, TestResult, ValidationContext

TYPE = "imap"


@hookimpl
def mailpipe_connection_types() -> list[ConnectionType]:
    return [
        ConnectionType(
            name=TYPE,
            description="Pull a journaling mailbox over IMAPS (implicit TLS)",
            receives="pull",
            provenance="imap",
            settings=IMAP_SETTINGS,
            validate=validate,
            test=test,
            collect=collect,
            warnings=imap_warnings,
        )
    ]


def validate(settings: dict[str, Any], context: ValidationContext) -> list[str]:
    return validate_imap_settings(settings)


async def test(connection: Connection, context: ValidationContext) -> TestResult:
    return await probe(ImapSettings.from_connection(connection))


async def collect(connection: Connection, context: CollectContext) -> None:
    async def deliver(message: FetchedMessage) -> None:
        await spool_as_is(context, message)

    await Collector(connection, context, deliver, deliver_batch=batch_spooler(context)).run()
