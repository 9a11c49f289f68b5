"""What imap_failover does with each message it pulls.

Office 365 sends a journal report it could not deliver to the undeliverable
journal mailbox, inside a non-delivery report. Here each fetched message is
looked into (``mailpipe.message.ndr``): a wrapped journal report is archived — its
exact bytes — under the backed-up ``smtp_o365`` connection, as if it had come
by SMTP (the pipeline's journal enricher reads its envelope), marked with
provenance ``imap_failover``. The same report arriving by SMTP as well is
stored once: the filesystem sink is content-addressed per connection and
lists both arrivals.

Anything else in that mailbox (a bounce of something else, a person's mail)
is archived as received under the failover connection itself with a note,
never dropped.

The MIME walker reads files, so each message is written to a private
temporary file first; a large message is streamed there from the server in
ranges, never held whole in memory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import anyio
import anyio.to_thread

from mailpipe.message.mime import MimeError
from mailpipe.message.ndr import extract_wrapped_journal_report
from mailpipe.plugins.imap.collector import FetchedMessage
from mailpipe.types import CollectContext, Connection

log = logging.getLogger("mailpipe.imap_failover")

READ_CHUNK = 256 * 1024
BACKED_UP_TYPE = "smtp_o365"
NOT_A_REPORT_NOTE = (
    "not a non-delivery report carrying a journal report; archived as received "
    "under the imap_failover connection"
)


class FailoverDelivery:
    def __init__(self, connection: Connection, context: CollectContext) -> None:
        self.connection = connection
        self.context = context
        self.backs_up = str(connection.settings.get("backs_up", ""))

    async def deliver(self, message: FetchedMessage) -> None:
        workdir = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="mailpipe-failover-")))
        try:
            received = workdir / "received.eml"
            await _write(received, message)
            report = workdir / "report.eml"
            unwrapped, problem = await anyio.to_thread.run_sync(_unwrap, received, report)
            if unwrapped:
                await self._archive_report(report, message)
            else:
                notes = [NOT_A_REPORT_NOTE] + ([problem] if problem else [])
                await self.context.spool_chunks(
                    _file_chunks(received),
                    {"imap": message.source, "notes": notes},
                )
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))

    async def _archive_report(self, report: Path, message: FetchedMessage) -> None:
        backed_up = self.context.find_connection(self.backs_up)
        metadata: dict[str, Any] = {
            "imap": message.source,
            "via_connection": self.connection.id,
        }
        if backed_up is not None and backed_up.type == BACKED_UP_TYPE:
            metadata.update(connection_id=backed_up.id, connection_type=backed_up.type)
        else:
            # The backed-up connection was deleted since: keep the report, under our own id.
            metadata["notes"] = [
                f"unwrapped journal report; the backed-up connection {self.backs_up!r} no longer exists "
                "as an smtp_o365 connection, so it is archived under the imap_failover connection"
            ]
            log.warning(
                "backed-up connection is gone; archiving unwrapped reports under the failover connection",
                extra={"connection": self.connection.id, "backs_up": self.backs_up},
            )
        await self.context.spool_chunks(_file_chunks(report), metadata)


async def _write(path: Path, message: FetchedMessage) -> None:
    """The fetched message into a file, whole or range by range."""
    handle = await anyio.to_thread.run_sync(lambda: open(path, "wb"))
    try:
        if message.data is not None:
            await anyio.to_thread.run_sync(handle.write, message.data)
        else:
            assert message.chunks is not None
            async for piece in message.chunks():
                await anyio.to_thread.run_sync(handle.write, piece)
    finally:
        await anyio.to_thread.run_sync(handle.close)


def _unwrap(received: Path, report: Path) -> tuple[bool, str]:
    """(True, "") with the report written to ``report``; (False, why) otherwise."""
    try:
        with open(report, "wb") as dest:
            return extract_wrapped_journal_report(received, dest), ""
    except MimeError as error:
        return False, f"the message could not be examined for a wrapped journal report: {error}"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            yield chunk
