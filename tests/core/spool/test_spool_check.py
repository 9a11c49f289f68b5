"""After a machine restart, the spool checks what the group committer wrote
with one sync per batch: whole messages are sealed and go on, damaged ones
are quarantined with the reason, never dropped."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.pipeline.delivery import retry_quarantined
from mailpipe.spool.queue import QUARANTINE, QUEUE, Spool
from mailpipe.spool.check import BOOT_KEY, CHECKED_BOOT_FILE, check_after_reboot, current_boot_id

NEXT_BOOT = "00000000-0000-4000-8000-000000000001"


async def _commit(spool: Spool, count: int) -> list:
    committer = GroupCommitter(spool)

    async def one(number: int):
        staged = await committer.take({"connection_id": "c1"})
        staged.write(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
        return await committer.commit(staged)

    try:
        return await asyncio.gather(*(one(n) for n in range(count)))
    finally:
        committer.close()


def _mark(spool: Spool, spool_id: str, where: str = QUEUE) -> dict:
    return json.loads((spool.root / where / f"{spool_id}.json").read_text())


def test_marks_record_the_boot_and_readers_never_see_it(tmp_path: Path) -> None:
    assert current_boot_id()  # Linux: the machine's boot id
    spool = Spool(tmp_path / "spool")
    messages = asyncio.run(_commit(spool, 3))
    for message in messages:
        assert _mark(spool, message.id)[BOOT_KEY] == current_boot_id()
        assert BOOT_KEY not in message.metadata
        assert BOOT_KEY not in spool.load(message.id).metadata
    # Same boot: nothing to check, nothing rewritten.
    assert check_after_reboot(spool) == (0, 0)
    assert all(BOOT_KEY in _mark(spool, m.id) for m in messages)


def test_after_a_restart_whole_messages_are_sealed_and_damaged_ones_quarantined(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    whole, cut, zeroed, bad_mark, no_file = asyncio.run(_commit(spool, 5))
    queue = spool.root / QUEUE
    cut_bytes = (queue / f"{cut.id}.eml").read_bytes()[:5]
    (queue / f"{cut.id}.eml").write_bytes(cut_bytes)
    (queue / f"{zeroed.id}.eml").write_bytes(b"\0" * zeroed.size)
    (queue / f"{bad_mark.id}.json").write_bytes(b"\0" * 40)
    (queue / f"{no_file.id}.eml").unlink()

    assert check_after_reboot(spool, NEXT_BOOT) == (1, 4)

    assert BOOT_KEY not in _mark(spool, whole.id)
    assert spool.load(whole.id).metadata == whole.metadata
    assert sorted(m.id for m in spool.pending()) == [whole.id]

    quarantined = {m.id: m for m in spool.pending(QUARANTINE)}
    assert sorted(quarantined) == sorted([cut.id, zeroed.id, bad_mark.id, no_file.id])
    damaged_cut = quarantined[cut.id].metadata
    assert damaged_cut["damaged"]["recorded_size"] == cut.size
    assert damaged_cut["damaged"]["recorded_sha256"] == cut.sha256
    assert damaged_cut["size"] == 5 and damaged_cut["sha256"] == hashlib.sha256(cut_bytes).hexdigest()
    assert "5 bytes" in damaged_cut["damaged"]["reason"]
    assert "sha256 differs" in quarantined[zeroed.id].metadata["damaged"]["reason"]
    assert "not a JSON object" in quarantined[bad_mark.id].metadata["damaged"]["reason"]
    assert quarantined[bad_mark.id].metadata["size"] == bad_mark.size  # the bytes are still there
    assert "missing" in quarantined[no_file.id].metadata["damaged"]["reason"]
    for spool_id in quarantined:
        state = spool.state(spool_id, QUARANTINE)
        assert state.quarantined_at and state.last_error.startswith("damaged in the spool")
        assert BOOT_KEY not in _mark(spool, spool_id, QUARANTINE)

    # Checked once per boot.
    assert (spool.root / CHECKED_BOOT_FILE).read_text().strip() == NEXT_BOOT
    (queue / f"{whole.id}.eml").write_bytes(b"changed after the check")
    assert check_after_reboot(spool, NEXT_BOOT) == (0, 0)

    # A retried damaged message goes back to the queue describing the bytes it has.
    assert retry_quarantined(spool, [cut.id]) == [cut.id]
    assert spool.load(cut.id).path.read_bytes() == cut_bytes
    assert spool.load(cut.id).sha256 == hashlib.sha256(cut_bytes).hexdigest()


def test_recover_runs_the_check(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (message,) = asyncio.run(_commit(spool, 1))
    (spool.root / QUEUE / f"{message.id}.eml").write_bytes(b"torn")
    mark = _mark(spool, message.id)
    mark[BOOT_KEY] = NEXT_BOOT  # written in another boot than this one
    (spool.root / QUEUE / f"{message.id}.json").write_text(json.dumps(mark))
    spool.recover()
    assert [m.id for m in spool.pending(QUARANTINE)] == [message.id]
    assert spool.pending() == []
