"""The group committer writes a message's bytes straight into queue/ID.eml;
until its commit mark is renamed in beside it, that file is no message:
the pipeline never lists it and the next start removes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.spool.group_commit import GroupCommitter
from mailpipe.spool.queue import Spool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_bytes_without_a_mark_are_not_a_message_and_go_at_the_next_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(spool)
    committed = await committer.take({"connection_id": "c"})
    committed.write(b"Subject: committed\r\n\r\nx\r\n")
    message = await committer.commit(committed)
    # A second message is being received when the process dies: its bytes are
    # in queue/ already, its mark is not.
    cut = await committer.take({"connection_id": "c"})
    cut.write(b"Subject: cut short\r\n\r\nhalf")
    cut.writer._file.flush()
    queue = tmp_path / "spool" / "queue"
    assert (queue / f"{cut.id}.eml").exists() and not (queue / f"{cut.id}.json").exists()
    assert [m.id for m in spool.pending()] == [message.id]

    restarted = Spool(tmp_path / "spool")  # what the next `mailpipe serve` does first
    restarted.recover()
    assert not (queue / f"{cut.id}.eml").exists()
    assert [m.id for m in restarted.pending()] == [message.id]
    assert (queue / f"{message.id}.eml").read_bytes() == b"Subject: committed\r\n\r\nx\r\n"
