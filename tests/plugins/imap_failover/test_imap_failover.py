"""imap_failover against a real Dovecot over TLS and a real SMTP client.

An NDR-wrapped journal report in the undeliverable journal mailbox is
archived — its exact bytes — under the backed-up smtp_o365 connection with
its envelope facts; the same report sent by SMTP is stored once with two
arrivals; mail that is not a wrapped report is archived as-is with a note.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.support.helpers import ServerProcess, cli, smtp_port_of, wait_until
from tests.support.imap import add_imap_connection, archived, bulk_append, make_message, sha256
from tests.support.journal_samples import build_exchange_report, build_ndr
from tests.support.peers.dovecot import Dovecot

WAIT = 30.0
RECIPIENTS = (("To", "bob@contoso.com"), ("Bcc", "carol@fabrikam.com"), ("To", "dl-member@contoso.com", "Expanded", "sales@contoso.com"))


def test_unwraps_ndrs_archives_others_and_dedups_with_smtp(
    tmp_path: Path, config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    undeliverable = f"{user}@contoso.com"
    o365 = cli(config_path, "connections", "add", "smtp_o365", "--description", "o365",
               "--set", f"undeliverable_journal_address={undeliverable}", check=True).json
    cli(config_path, "connections", "enable", o365["id"], check=True)
    failover_id = add_imap_connection(
        config_path, dovecot, user, password, "imap_failover", enable=True, backs_up=o365["id"]
    )

    report = build_exchange_report("alice@contoso.com", RECIPIENTS, subject="Q3 numbers",
                                   message_id="<q3@contoso.com>")
    forwarded_report = build_exchange_report("dave@contoso.com", (("To", "erin@contoso.com"),),
                                             subject="Forwarded one", message_id="<fw@contoso.com>")
    unrelated = make_message(1, subject="not an NDR")
    bulk_append(dovecot, user, [build_ndr(report), build_ndr(forwarded_report, forwarded=True, cte="base64"),
                                unrelated])

    archive = tmp_path / "archive"
    with ServerProcess(config_path):
        wait_until(lambda: len(archived(archive, o365["id"])) == 2 and len(archived(archive, failover_id)) == 1,
                   WAIT, message="failover did not archive the three messages")
        wait_until(lambda: dovecot.uids(user) == [], WAIT)

        reports = archived(archive, o365["id"])
        assert set(reports) == {sha256(report), sha256(forwarded_report)}, "not the reports' exact bytes"
        raw, metadata = reports[sha256(report)]
        assert raw == report
        assert metadata["connection_id"] == o365["id"] and metadata["connection_type"] == "smtp_o365"
        journal = metadata["journal"]
        assert journal["sender"] == "alice@contoso.com" and journal["message_id"] == "<q3@contoso.com>"
        assert {(r["kind"], r["address"]) for r in journal["recipients"]} >= {
            ("Bcc", "carol@fabrikam.com"), ("To", "dl-member@contoso.com")}
        (arrival,) = metadata["arrivals"]
        assert arrival["provenance"] == "imap_failover"
        assert arrival["via_connection"] == failover_id
        assert arrival["imap"]["mailbox"] == "INBOX" and arrival["imap"]["server"] == dovecot.host
        assert reports[sha256(forwarded_report)][1]["journal"]["sender"] == "dave@contoso.com"

        ((raw, metadata),) = archived(archive, failover_id).values()
        assert raw == unrelated
        assert "journal" not in metadata
        assert any("not a non-delivery report" in note for note in metadata["arrivals"][0]["notes"])

        # The same report also arrives by SMTP: still one file, now with two arrivals.
        with smtplib.SMTP("127.0.0.1", smtp_port_of(config_path), timeout=30) as client:
            client.sendmail(undeliverable, [o365["address"]], report)

        def both_arrivals() -> bool:
            entry = archived(archive, o365["id"]).get(sha256(report))
            return entry is not None and len(entry[1]["arrivals"]) == 2

        wait_until(both_arrivals, WAIT, message="the SMTP arrival was not recorded")
    reports = archived(archive, o365["id"])
    assert len(reports) == 2
    arrivals = reports[sha256(report)][1]["arrivals"]
    assert sorted(a["provenance"] for a in arrivals) == ["imap_failover", "smtp"]
    assert all(a["connection_id"] == o365["id"] for a in arrivals)


def test_connection_test_warns_about_a_username_that_is_not_the_undeliverable_address(
    config_path: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    user, password = fresh_imap_user
    o365 = cli(config_path, "connections", "add", "smtp_o365", "--description", "o365",
               "--set", "undeliverable_journal_address=someone-else@contoso.com", check=True).json
    failover_id = add_imap_connection(config_path, dovecot, user, password, "imap_failover", backs_up=o365["id"])
    tested = cli(config_path, "connections", "test", failover_id, check=True).json
    assert tested["status"] == "ok"
    assert any("is not 'someone-else@contoso.com'" in w for w in tested["test"]["warnings"])

    cli(config_path, "connections", "delete", o365["id"], check=True)
    gone = cli(config_path, "connections", "test", failover_id)
    assert gone.code == 1 and gone.json["status"] == "failed"
    assert "is no longer an smtp_o365 connection" in gone.json["status_error"]
