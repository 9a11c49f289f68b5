"""DATA that keeps arriving, however slowly, is never timed out; silence is
(issue 11, item 7: docs/smtp.md promised the first while a sender slower than
about 218 B/s was cut at the idle timeout, the timer being re-armed only per
64 KiB piece). Real sockets; `idle_timeout` is lowered to 2 s for the test."""

from __future__ import annotations

import contextlib
import smtplib
import time
from pathlib import Path

import pytest

from tests.support.helpers import ServerProcess
from tests.support.smtp import make_setup, queue_id_of, wait_for_arrival

pytestmark = pytest.mark.peer

SENDER = "journal-ndr@example.com"
IDLE_TIMEOUT = 2


def open_data(setup) -> smtplib.SMTP:  # type: ignore[no-untyped-def]
    client = setup.client()
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(setup.address("o365"))[0] == 250
    assert client.docmd("DATA")[0] == 354
    return client


def test_slow_but_progressing_data_is_not_cut_and_silence_is(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, smtp=f"idle_timeout = {IDLE_TIMEOUT}\n")
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    raw = b"Subject: slow\r\n\r\n" + b"".join(b"line %02d\r\n" % i for i in range(12))
    with ServerProcess(setup.config):
        with contextlib.closing(open_data(setup)) as client:
            # a few bytes every 0.5 s, for three times the idle timeout in all
            for start in range(0, len(raw), len(raw) // 12):
                client.send(raw[start : start + len(raw) // 12])
                time.sleep(IDLE_TIMEOUT * 3 / 12)
            client.send(b".\r\n")
            code, text = client.getreply()
        assert code == 250, text
        archived = wait_for_arrival(setup.archive, queue_id_of(text.decode()))
        assert archived[0][0] == raw

        with contextlib.closing(open_data(setup)) as client:
            client.send(raw[:20])
            time.sleep(IDLE_TIMEOUT * 3)  # silence: the server says 421 and closes
            try:
                client.send(raw[20:] + b".\r\n")
                code, text = client.getreply()
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                code, text = 0, b"disconnected before the reply was read"
            assert code in (0, 421), text
            with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
                client.send(b"NOOP\r\n")
                client.getreply()
