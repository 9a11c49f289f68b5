"""Facts parsed from a spooled message before it goes to the sinks.

Parsing is best effort: the bytes are the evidence, so a message that
cannot be parsed is archived with a warning, never held back. Parse work
per message is bounded (mailpipe.message.journal.MAX_PARTS_WALKED), so one
pathological message cannot hold the messages behind it in its batch; a
bounded parse is recorded as ``"facts": "partial"`` with ``"facts_partial"``
saying why.
"""

from __future__ import annotations

from typing import Any

from mailpipe.spool.queue import SpooledMessage


def journal_facts(message: SpooledMessage) -> dict[str, Any]:
    """Envelope facts of an Exchange / Office 365 journal report, if it is one."""
    from mailpipe.message.journal import parse_journal_report

    facts = parse_journal_report(message.path)
    if facts is None:
        return {}
    partial = facts.pop("partial", None)
    if partial:
        return {"journal": facts, "facts": "partial", "facts_partial": partial}
    return {"journal": facts}


def default_enrichers() -> list:
    return [journal_facts]
