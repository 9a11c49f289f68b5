"""Facts parsed from a spooled message before it goes to the sinks.

Parsing is best effort: the bytes are the evidence, so a message that
cannot be parsed is archived with a warning, never held back.
"""

from __future__ import annotations

from typing import Any

from mailpipe.spool import SpooledMessage


def journal_facts(message: SpooledMessage) -> dict[str, Any]:
    """Envelope facts of an Exchange / Office 365 journal report, if it is one."""
    from mailpipe.journal import parse_journal_report

    facts = parse_journal_report(message.path)
    return {"journal": facts} if facts is not None else {}


def default_enrichers() -> list:
    return [journal_facts]
