"""Committing a whole batch of messages that are already in memory.

A collector that fetched a batch (the IMAP collector: up to a few hundred
small messages per ``UID FETCH``) has every byte before it spools anything.
Spooling them one by one through the group committer costs a task, an
event, a staged file pair and a thread hop per message: the profile of a
10,000-message IMAP pull showed that bookkeeping, not the disk, as most of
the collector's CPU (docs/benchmarks.md, "IMAP: the profile and each
step"). Here the batch is written with a handful of system calls per
message and no per-message task (the group committer calls these from its
event loop, a slice at a time, and syncs in a worker thread):

1. each message's bytes go straight into ``queue/ID.eml`` (a file from
   ``free/`` when there is one); an ``.eml`` without its commit mark is
   not a message (the pipeline only looks for marks, and recovery at start
   removes such a file), so no staging name is needed for the bytes;
2. its commit mark (metadata, sha256, size, the boot id) is written under
   ``tmp/`` and renamed to ``queue/ID.json``;
3. one ``syncfs`` makes the batch durable (where ``syncfs`` is missing:
   each file is fsynced before its mark is renamed, then ``queue/``).

Only after step 3 is the batch reported spooled, and only then may the
collector act on the messages at the source. On any failure every file of the batch is
removed again and the error raised: nothing in the batch is acknowledged
(the pipeline may have seen a mark already and store a message that is
then fetched again: a duplicate, never a loss, as with the group commit).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from mailpipe.spool.durability import encode_commit_mark, sync_filesystem_of, write_descriptor
from mailpipe.spool.layout import QUEUE, TMP
from mailpipe.spool.queue import Spool, SpooledMessage, fsync_directory, new_spool_id, unlink_if_present, utc_now_text

#: One message of a batch: its bytes and the caller's metadata.
BatchItem = tuple[bytes | bytearray | memoryview, dict[str, Any]]


def write_files(
    spool: Spool, items: Sequence[BatchItem], boot: str | None, fsync: bool, written: list[str]
) -> list[SpooledMessage]:
    """Steps 1 and 2 for ``items``; every path created is added to ``written``
    (for :func:`remove_files` when the batch fails)."""
    root = spool.root_text
    queue = f"{root}/{QUEUE}"
    messages: list[SpooledMessage] = []
    for data, metadata in items:
        spool_id = new_spool_id()
        eml = f"{queue}/{spool_id}.eml"
        written.append(eml)
        _write_file(spool, eml, data, fsync)
        final = {
            **metadata,
            "spool_id": spool_id,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        final.setdefault("received_at", utc_now_text())
        encoded = encode_commit_mark(final, boot)
        staged_mark = f"{root}/{TMP}/{spool_id}.json.commit"
        written.append(staged_mark)
        _write_file(spool, staged_mark, encoded, fsync)
        written.append(f"{queue}/{spool_id}.json")
        os.rename(staged_mark, f"{queue}/{spool_id}.json")
        messages.append(SpooledMessage(spool_id, Path(eml), final))
    return messages


def make_durable(spool: Spool, syncfs: Callable[[int], None] | None) -> None:
    """Step 3: one ``syncfs``; without it (files already fsynced) ``queue/``."""
    if syncfs is not None:
        sync_filesystem_of(spool.root, syncfs)
    else:
        fsync_directory(spool.root / QUEUE)


def remove_files(written: list[str]) -> None:
    for path in written:
        unlink_if_present(path)


def _write_file(spool: Spool, path: str, data: bytes | bytearray | memoryview, fsync: bool) -> None:
    descriptor, reused = spool.recycler.open_new(path)
    try:
        write_descriptor(descriptor, data, reused, fsync)
    finally:
        os.close(descriptor)
