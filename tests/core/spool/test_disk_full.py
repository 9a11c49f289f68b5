"""A full disk under the data directory: a real, small tmpfs mounted for the test.

Intake is refused with ``452 4.3.1`` (temporary: the sender retries) before
the disk is completely full (``[spool] min_free_bytes``) and whenever a write
fails for lack of space; nothing is left behind in ``spool/tmp``; IMAP
collection pauses without touching the server; the pipeline keeps running
when it cannot record progress; the connections' live status and
``Spool.readiness()`` say "disk full"; everything resumes once space is freed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests.support.helpers import cli, wait_until
from tests.support.imap import add_imap_connection, archived as imap_archived, bulk_append, make_message, sha256
from tests.support.peers.dovecot import Dovecot
from tests.support.peers.require import peer_missing
import smtplib

from tests.support.smtp import SmtpSetup, dot_stuff, make_setup

from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import Spool
from mailpipe.types import SinkContext

MiB = 1024 * 1024
RESERVE = 2 * MiB
SENDER = "undeliverable@contoso.com"
WAIT = 120.0  # bounds only


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, unmounted at teardown."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        peer_missing("mounting a small filesystem for the disk-full tests needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        peer_missing(f"cannot mount a tmpfs for the disk-full tests: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path, leave: int, name: str = "filler") -> Path:
    """Allocate a file so that about ``leave`` bytes stay free."""
    filler = path / f"{name}-{time.monotonic_ns()}"
    size = max(0, free_bytes(path) - leave)
    with open(filler, "wb") as handle:
        if size:
            os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def fill_completely(path: Path) -> Path:
    filler = path / f"last-{time.monotonic_ns()}"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def journal(number: int, size: int = 300) -> bytes:
    return (
        f"From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: disk full {number}\r\n"
        f"Message-ID: <{number}.{time.monotonic_ns()}@contoso.com>\r\n\r\n"
    ).encode() + b"x" * size + b"\r\n"


def send(client: smtplib.SMTP, mail_from: str, recipients: list[str], data: bytes) -> tuple[int, str, bool]:
    """MAIL, RCPT, DATA; the reply to DATA itself when it is not 354 (a full
    spool is refused there, before the client sends the message), and
    whether the message itself was sent."""
    assert client.mail(mail_from)[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250
    code, text = client.docmd("DATA")
    sent = code == 354
    if sent:
        client.send(dot_stuff(data) + b".\r\n")
        code, text = client.getreply()
    else:
        client.rset()
    return code, text.decode(), sent


def status_of(setup: SmtpSetup, connection_id: str) -> tuple[str, str]:
    shown = cli(setup.config, "connections", "show", connection_id, "--json", check=True).json
    return shown["status"], shown.get("status_error", "")


def tmp_bytes(spool_dir: Path) -> int:
    return sum(p.stat().st_size for p in (spool_dir / "tmp").iterdir())


def test_disk_full_refuses_with_452_pauses_imap_and_resumes(
    tmp_path: Path, small_fs: Path, dovecot: Dovecot, fresh_imap_user: tuple[str, str]
) -> None:
    setup = make_setup(tmp_path / "mp")
    data_dir = small_fs / "data"
    text = setup.config.read_text().replace('data_dir = "data"', f'data_dir = "{data_dir}"')
    setup.config.write_text(text + f"\n[spool]\nmin_free_bytes = {RESERVE}\n")
    spool_dir = data_dir / "spool"
    smtp_connection = setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    address = setup.address("o365")
    user, password = fresh_imap_user
    imap_mail = {sha256(m): m for m in (make_message(n) for n in range(30))}
    bulk_append(dovecot, user, imap_mail.values())
    setup.start()
    try:
        assert setup.server is not None
        client = setup.client()
        code, reply, _ = send(client, SENDER, [address], journal(0))
        assert code == 250, reply

        # 1. Below the reserve: refused before the disk is completely full.
        fillers = [fill(small_fs, RESERVE // 2)]
        readiness = Spool(spool_dir, min_free_bytes=RESERVE).readiness()
        assert readiness is not None and readiness.startswith("disk full"), readiness

        def refused() -> tuple[int, str] | None:
            code, reply, _ = send(client, SENDER, [address], journal(1))
            return (code, reply) if code != 250 else None

        code, reply = wait_until(refused, WAIT, interval=0.5)
        assert code == 452 and reply.startswith("4.3.1"), (code, reply)
        for internal in ("Errno", "OSError", "No space left", str(small_fs)):
            assert internal not in reply
        wait_until(lambda: status_of(setup, smtp_connection["id"])[0] == "failed", WAIT, interval=0.5)
        assert status_of(setup, smtp_connection["id"])[1].startswith("disk full"), status_of(setup, smtp_connection["id"])
        for number in range(5):  # a sender retrying does not flood the log
            assert send(client, SENDER, [address], journal(10 + number))[0] == 452

        # 2. IMAP collection pauses: nothing is deleted at the server.
        imap_id = add_imap_connection(setup.config, dovecot, user, password, enable=True)
        setup.server.wait_for_log("IMAP collection paused", WAIT)
        wait_until(lambda: status_of(setup, imap_id)[0] == "failed", WAIT, interval=0.5)
        assert "disk full" in status_of(setup, imap_id)[1]
        assert len(dovecot.uids(user)) == len(imap_mail)

        # 3. Above the reserve, but the message does not fit: the write fails
        #    with ENOSPC, the answer is still 452 and nothing is left in tmp/.
        for filler in fillers:
            filler.unlink()
        fillers = [fill(small_fs, RESERVE + 3 * MiB)]
        time.sleep(1.1)  # let the cached free-space figure expire (not an assertion)

        def big_refused() -> tuple[int, str, bool] | None:
            code, reply, sent = send(client, SENDER, [address], journal(2, size=8 * MiB))
            return (code, reply, sent) if code != 250 else None

        code, reply, sent = wait_until(big_refused, WAIT, interval=0.5)
        assert sent, "refused before DATA: the write-time ENOSPC path was not exercised"
        assert code == 452 and reply.startswith("4.3.1"), (code, reply)
        assert tmp_bytes(spool_dir) < MiB, sorted((spool_dir / "tmp").iterdir())
        assert not list((spool_dir / "tmp").glob("*.tmp"))
        assert len(dovecot.uids(user)) == len(imap_mail)

        # 4. Space returns: mail is accepted and archived, collection resumes.
        for filler in fillers:
            filler.unlink()

        def accepted() -> str | None:
            code, reply, _ = send(client, SENDER, [address], journal(3))
            return reply if code == 250 else None

        wait_until(accepted, WAIT, interval=0.5)
        wait_until(lambda: len(imap_archived(setup.archive, imap_id)) == len(imap_mail), WAIT, interval=0.5)
        wait_until(lambda: dovecot.uids(user) == [], WAIT, interval=0.5)
        assert set(imap_archived(setup.archive, imap_id)) == set(imap_mail)
        wait_until(lambda: status_of(setup, smtp_connection["id"]) == ("ok", ""), WAIT, interval=0.5)
        wait_until(lambda: status_of(setup, imap_id) == ("ok", ""), WAIT, interval=0.5)
        assert Spool(spool_dir, min_free_bytes=RESERVE).readiness() is None
        client.quit()

        logs = setup.server.logs()
        full_lines = [e for e in logs if str(e.get("msg", "")).startswith("disk full")]
        assert 1 <= len(full_lines) <= 3, full_lines  # rate-limited, not one per refusal
        assert any("disk space available again" in str(e.get("msg")) for e in logs)
        assert not any("500" in str(e.get("reply", "")) for e in logs)
    finally:
        setup.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_pipeline_survives_a_full_disk_while_recording_state(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive and the spool on one full filesystem: the sink fails with
    ENOSPC and so does writing the delivery state; the pipeline keeps
    running, leaves nothing in tmp/, and archives once space returns."""
    spool = Spool(small_fs / "spool", min_free_bytes=0)
    sink = FilesystemSink("fs", {"path": str(small_fs / "archive")}, SinkContext(data_dir=str(small_fs), config_dir=str(small_fs)))
    message = await spool.write_bytes(journal(1, size=256 * 1024), {"connection_id": "c1"})
    filler = fill_completely(small_fs)
    pipeline = Pipeline(spool, [SinkSlot("fs", sink)], recover_at_start=False)
    caplog.set_level(logging.WARNING)
    try:
        async with anyio.create_task_group() as group:
            await group.start(pipeline.run)
            with anyio.fail_after(WAIT):
                while not any("disk full" in record.getMessage() for record in caplog.records):
                    await anyio.sleep(0.1)
            assert not list((small_fs / "spool" / "tmp").iterdir())
            assert spool.load(message.id) is not None  # still spooled, not lost
            filler.unlink()
            with anyio.fail_after(WAIT):
                while spool.load(message.id) is not None:
                    await anyio.sleep(0.1)
            group.cancel_scope.cancel()
    finally:
        await sink.aclose()
    assert list(sink.entries())


def test_reserve_setting_and_default() -> None:
    from mailpipe.config import parse_config
    from mailpipe.spool.disk_space import default_reserve
    from mailpipe.errors import ConfigError

    assert parse_config("[spool]\nmin_free_bytes = 1000\n", Path("."), "t").spool.min_free_bytes == 1000
    assert parse_config("", Path("."), "t").spool.min_free_bytes is None
    # sizes as in [smtp] max_message_size: a number of bytes or a string with a unit
    assert parse_config('[spool]\nmin_free_bytes = "1GiB"\n', Path("."), "t").spool.min_free_bytes == 1024 * MiB
    with pytest.raises(ConfigError, match=r"\[spool\] min_free_bytes must be a size, 0 or more"):
        parse_config('[spool]\nmin_free_bytes = "lots"\n', Path("."), "t")
    with pytest.raises(ConfigError, match=r"\[spool\] min_free_bytes must be a size, 0 or more"):
        parse_config("[spool]\nmin_free_bytes = -1\n", Path("."), "t")
    assert default_reserve(10 * 1024 * MiB) == int(10 * 1024 * MiB * 0.01)  # 1 % of a small disk
    assert default_reserve(1024 * 1024 * MiB) == 256 * MiB  # at most 256 MiB


@pytest.mark.anyio
@pytest.mark.parametrize("step", ["sync", "rename"])
async def test_enospc_while_committing_is_a_temporary_452_and_leaves_nothing(
    small_fs: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC where a real small filesystem cannot be made to fail on cue (the
    filesystem sync, a rename): the same 452 4.3.1, and no file of the
    refused message stays in tmp/ or the queue."""
    import errno

    from mailpipe.spool import group_commit
    from mailpipe.config import SmtpConfig
    from mailpipe.spool.group_commit import GroupCommitter
    from mailpipe.intake.smtp.receive import MessageReceiver, Route, SessionFacts
    from mailpipe.types import Connection

    spool = Spool(small_fs / "spool", min_free_bytes=0)
    committer = GroupCommitter(spool)

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if step == "sync":
        committer.syncfs = no_space
        monkeypatch.setattr(group_commit, "sync_filesystem_of", lambda path, syncfs: syncfs(0))
    else:
        monkeypatch.setattr(group_commit.os, "rename", no_space)
    connection = Connection(id="c1", type="smtp_o365", description="", enabled=True, settings={})
    facts = SessionFacts(peer_ip="127.0.0.1", balancer_ip=None, helo="h", mail_from="a@b", tls=False)
    receiver = await MessageReceiver.open(committer, [Route(connection, ["j@journal.test"])], SmtpConfig(), facts)
    receiver.feed(b"Subject: x\r\n\r\nbody\r\n")
    reply = await receiver.finish()
    receiver.abort()
    committer.close()
    monkeypatch.undo()
    assert reply.startswith("452 4.3.1 "), reply
    assert "Errno" not in reply and "No space" not in reply
    assert not list((small_fs / "spool" / "tmp").iterdir())
    assert not list((small_fs / "spool" / "queue").iterdir())


def test_files_are_not_kept_for_reuse_while_the_disk_is_low(small_fs: Path) -> None:
    """A delivered message's files go back to the filesystem, not to spool/free/,
    while the disk is below the reserve."""
    spool = Spool(small_fs / "spool", min_free_bytes=RESERVE)
    kept = small_fs / "spool" / "queue" / "kept.eml"
    kept.write_bytes(b"x" * 1000)
    spool.recycler.release(kept)
    assert len(list((small_fs / "spool" / "free").iterdir())) == 1  # room: kept for reuse
    filler = fill(small_fs, RESERVE // 2)
    time.sleep(1.1)  # the cached free-space figure expires (not an assertion)
    dropped = small_fs / "spool" / "queue" / "dropped.eml"
    dropped.write_bytes(b"x" * 1000)
    spool.recycler.release(dropped)
    assert not dropped.exists()
    assert len(list((small_fs / "spool" / "free").iterdir())) == 1
    filler.unlink()
