"""Journal reports journaled over SMTP: archived byte for byte, envelope facts in the metadata.

The reports are built from Microsoft's published format (tests/journal_samples.py);
the parsing itself is the pipeline's enricher (core/pipeline/enrich.py), which every path uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.journal_samples import build_exchange2003_report, build_exchange_report, build_report_around_text
from tests.support.smtp import SmtpSetup, arrival, make_setup, queue_id_of, send, wait_for_arrival

SENDER = "journal-undeliverable@contoso.com"

ENVELOPE = (
    ("To", "bob@contoso.com"),
    ("Cc", "carol@contoso.com"),
    ("Bcc", "dave@fabrikam.com"),
    ("To", "erin@contoso.com", "Expanded", "sales@contoso.com"),
    ("Recipient", "frank@contoso.com", "Forwarded", "frank.old@contoso.com"),
)
EXPECTED_RECIPIENTS = [
    {"address": "bob@contoso.com", "kind": "To", "expanded": None, "forwarded": None},
    {"address": "carol@contoso.com", "kind": "Cc", "expanded": None, "forwarded": None},
    {"address": "dave@fabrikam.com", "kind": "Bcc", "expanded": None, "forwarded": None},
    {"address": "erin@contoso.com", "kind": "To", "expanded": "sales@contoso.com", "forwarded": None},
    {"address": "frank@contoso.com", "kind": "Recipient", "expanded": None, "forwarded": "frank.old@contoso.com"},
]


@pytest.fixture(scope="module")
def journaling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSetup]:
    setup = make_setup(tmp_path_factory.mktemp("journal"))
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    setup.start()
    yield setup
    setup.stop()


def journal_over_smtp(setup: SmtpSetup, report: bytes) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """Send like Office 365 does (8BITMIME, SMTPUTF8 when needed); the archived bytes,
    the metadata and this arrival."""
    options = ("BODY=8BITMIME",) if report.isascii() else ("BODY=8BITMIME", "SMTPUTF8")
    with setup.client() as client:
        code, reply, _ = send(client, SENDER, [setup.address("o365")], report, options=options)
    assert code == 250, (code, reply)
    queue_id = queue_id_of(reply)
    [(raw, meta)] = wait_for_arrival(setup.archive, queue_id)
    return raw, meta, arrival(meta, queue_id)


@pytest.mark.parametrize("encoding", ["7bit", "quoted-printable", "base64"])
def test_exchange_report_facts(journaling: SmtpSetup, encoding: str) -> None:
    report = build_exchange_report(
        "alice@contoso.com",
        ENVELOPE,
        subject=f"Quarterly figures ({encoding})",
        message_id=f"<q-{encoding}@contoso.com>",
        on_behalf_of="boss@contoso.com",
        encoding=encoding,
    )
    raw, meta, entry = journal_over_smtp(journaling, report)
    assert raw == report
    journal = meta["journal"]
    assert journal["format"] == "exchange2007"
    assert journal["sender"] == "alice@contoso.com"
    assert journal["on_behalf_of"] == "boss@contoso.com"
    assert journal["subject"] == f"Quarterly figures ({encoding})"
    assert journal["message_id"] == f"<q-{encoding}@contoso.com>"
    assert journal["recipients"] == EXPECTED_RECIPIENTS
    assert journal["original_attached"] is True
    assert journal["warnings"] == []
    assert entry["smtp"]["mail_from"] == SENDER


@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
def test_utf8_subject_and_addresses(journaling: SmtpSetup, encoding: str) -> None:
    subject = f"Überweisung für Jürgen — 季度 ({encoding})"
    report = build_exchange_report(
        "jürgen@exämple.de", [("To", "zoë@exämple.de"), ("Bcc", "bob@contoso.com")],
        subject=subject, message_id=f"<utf8-{encoding}@exämple.de>", encoding=encoding,
    )
    raw, meta, _ = journal_over_smtp(journaling, report)
    assert raw == report
    journal = meta["journal"]
    assert journal["subject"] == subject
    assert journal["sender"] == "jürgen@exämple.de"
    assert [r["address"] for r in journal["recipients"]] == ["zoë@exämple.de", "bob@contoso.com"]


def test_message_id_spelt_message_id(journaling: SmtpSetup) -> None:
    report = build_exchange_report(message_id="<lower@contoso.com>", message_id_label="Message-Id")
    _, meta, _ = journal_over_smtp(journaling, report)
    assert meta["journal"]["message_id"] == "<lower@contoso.com>"


@pytest.mark.parametrize("misspelt", [False, True], ids=["Content-Identifier", "Content-Identifer"])
def test_exchange2003_report(journaling: SmtpSetup, misspelt: bool) -> None:
    report = build_exchange2003_report(
        "alice@contoso.com", ("bob@contoso.com", "carol@contoso.com"),
        subject=f"legacy {misspelt}", misspelt=misspelt,
    )
    raw, meta, _ = journal_over_smtp(journaling, report)
    assert raw == report
    journal = meta["journal"]
    assert journal["format"] == "exchange2003"
    assert journal["sender"] == "alice@contoso.com"
    assert [r["address"] for r in journal["recipients"]] == ["bob@contoso.com", "carol@contoso.com"]


def test_unparseable_report_archived_with_a_warning(journaling: SmtpSetup) -> None:
    report = build_report_around_text(b"this is not an envelope at all\r\n", original=b"")
    raw, meta, _ = journal_over_smtp(journaling, report)
    assert raw == report
    assert meta["journal"]["warnings"], meta["journal"]


def test_plain_mail_is_archived_with_its_envelope(journaling: SmtpSetup) -> None:
    plain = b"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: not a report\r\n\r\nhi\r\n"
    raw, meta, entry = journal_over_smtp(journaling, plain)
    assert raw == plain
    assert "journal" not in meta
    assert entry["smtp"]["rcpt_to"] == [journaling.address("o365")]
