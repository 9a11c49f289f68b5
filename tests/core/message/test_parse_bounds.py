"""One pathological message does not hold the pipeline (issue 11, item 6).

A "journal report" made of many thousands of empty MIME parts cost one header
parse per part (46 s for 35 MB before). The walk now stops after
MAX_PARTS_WALKED parts and records the facts as partial; the message is
still archived byte for byte, and the small message spooled behind it in
the same batch is archived with it. No timing: the test checks the facts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.journal_samples import report_lines
from mailpipe.pipeline.enrich import default_enrichers
from mailpipe.message.journal import MAX_PARTS_WALKED
from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import Spool
from mailpipe.types import SinkContext

pytestmark = pytest.mark.anyio


def many_empty_parts(count: int) -> bytes:
    text = "\r\n".join(report_lines("alice@contoso.com", [("To", "bob@contoso.com")], "s", "<m@contoso.com>", None))
    head = (
        "From: journal@contoso.com\r\nX-MS-Journal-Report:\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        f"--b\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
    ).encode()
    return head + b"--b\r\n\r\n" * count + b"--b--\r\n"


async def test_a_message_of_many_empty_parts_is_parsed_partially_and_holds_nobody(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    sink = FilesystemSink("fs", {"path": str(tmp_path / "archive")}, SinkContext(str(tmp_path), str(tmp_path)))
    pipeline = Pipeline(spool, [SinkSlot("fs", sink)], enrichers=default_enrichers())
    big_raw = many_empty_parts(MAX_PARTS_WALKED * 20)
    big = await spool.write_bytes(big_raw, {"connection_id": "c"})
    small = await spool.write_bytes(b"Subject: small\r\n\r\nbehind the big one\r\n", {"connection_id": "c"})
    await pipeline.process_batch([big.id, small.id])
    assert spool.pending() == [] and pipeline.delivered == 2

    archived = {m.id.split("/")[1]: m for m in sink.entries()}
    big_entry, small_entry = archived[big.sha256], archived[small.sha256]
    assert big_entry.eml_path.read_bytes() == big_raw  # whole, byte for byte
    assert big_entry.metadata["facts"] == "partial"
    assert f"more than {MAX_PARTS_WALKED} MIME parts" in big_entry.metadata["facts_partial"]
    assert big_entry.metadata["journal"]["sender"] == "alice@contoso.com"  # what was read is kept
    assert "facts" not in small_entry.metadata


async def test_an_ordinary_report_is_not_partial(tmp_path: Path) -> None:
    from mailpipe.pipeline.enrich import journal_facts

    spool = Spool(tmp_path / "spool")
    message = await spool.write_bytes(many_empty_parts(3), {})
    facts = journal_facts(message)
    assert "facts" not in facts and facts["journal"]["sender"] == "alice@contoso.com"
