"""After the machine restarted: checking what the group committer wrote.

The group committer (group_commit.py) renames a batch's files into
``queue/`` and then makes the whole batch durable with one ``syncfs``; only
after that does any sender get its ``250``. While the machine runs, the
page cache shows every file whole, so a message in ``queue/`` is complete.
A machine that stops in the middle of a batch (power, kernel panic) may
come back with that batch's names on disk but not all of its bytes: a
message file cut short, zeros, a commit mark that is not JSON.

So each commit mark records the kernel's boot id (``BOOT_KEY``). At start,
the pipeline's recovery checks every message that an earlier boot wrote
and that no check has yet passed:

- size and sha256 match what was recorded at intake: the mark is rewritten
  without the boot id (sealed) and the message goes on as usual;
- anything else: the message goes to ``quarantine/`` with the reason, and
  its metadata describes the bytes that are there (``damaged`` keeps what
  was recorded). Such a message was almost surely still being received
  when the machine stopped, so its sender never got ``250`` and sent it
  again; it is kept for an operator to look at, never deleted.
  ``mailpipe spool retry`` archives it as it is.

``spool/checked-boot`` records the boot whose start checked the spool, so
later starts in the same boot skip the scan.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailpipe.spool.durability import write_json_durably
from mailpipe.spool.layout import BOOT_KEY, QUARANTINE, QUEUE, TMP

if TYPE_CHECKING:
    from mailpipe.spool.queue import Spool

log = logging.getLogger("mailpipe.spool")

CHECKED_BOOT_FILE = "checked-boot"
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def current_boot_id() -> str | None:
    """This boot of the machine (Linux), or None where the kernel has no such id."""
    try:
        return _BOOT_ID_PATH.read_text().strip() or None
    except OSError:
        return None


def check_after_reboot(spool: "Spool", boot: str | None = None) -> tuple[int, int]:
    """Seal or quarantine what earlier boots wrote; returns (sealed, quarantined)."""

    boot = boot or current_boot_id()
    if boot is None:
        return 0, 0
    checked_file = spool.root / CHECKED_BOOT_FILE
    try:
        if checked_file.read_text().strip() == boot:
            return 0, 0
    except FileNotFoundError:
        pass
    sealed = quarantined = 0
    queue = spool.root / QUEUE
    for mark in sorted(queue.glob("*.json")):
        if mark.name.endswith(".state.json"):
            continue
        metadata = _read_mark(mark)
        if metadata is not None and metadata.get(BOOT_KEY) in (None, boot):
            continue
        spool_id = mark.name[: -len(".json")]
        problem, actual = _compare(queue / f"{spool_id}.eml", metadata)
        if problem is None:
            assert metadata is not None
            metadata.pop(BOOT_KEY)
            write_json_durably(mark, metadata, spool.root / TMP)
            sealed += 1
            continue
        repaired = _describe_damage(spool_id, metadata, actual, problem)
        write_json_durably(mark, repaired, spool.root / TMP)
        _write_quarantine_state(spool, spool_id, problem)
        spool.move(spool_id, QUEUE, QUARANTINE)
        quarantined += 1
        log.error(
            "message quarantined at start: " + problem + "; it was probably being received when the "
            "machine stopped (its sender then never got 250 and sent it again); look at it in the "
            "quarantine, then `mailpipe spool retry` archives it as it is",
            extra={"spool_id": spool_id},
        )
    tmp = spool.root / TMP / f"{CHECKED_BOOT_FILE}.tmp"
    tmp.write_text(boot + "\n")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.rename(tmp, checked_file)
    if sealed or quarantined:
        log.info(
            "checked the messages an earlier boot left in the spool",
            extra={"sealed": sealed, "quarantined": quarantined},
        )
    return sealed, quarantined


def _read_mark(mark: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(mark.read_bytes())
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) else None


def _compare(eml: Path, metadata: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    """(what is wrong or None, the actual size and sha256 of the message file)."""
    try:
        digest = hashlib.sha256()
        size = 0
        with open(eml, "rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return "its message file is missing", None
    actual = {"size": size, "sha256": digest.hexdigest()}
    if metadata is None:
        return "its metadata file is damaged (not a JSON object)", actual
    if metadata.get("size") != size:
        return f"its message file has {size} bytes where {metadata.get('size')} were received", actual
    if metadata.get("sha256") != actual["sha256"]:
        return "its message file's content is not what was received (sha256 differs)", actual
    return None, actual


def _describe_damage(
    spool_id: str, metadata: dict[str, Any] | None, actual: dict[str, Any] | None, problem: str
) -> dict[str, Any]:
    repaired = dict(metadata or {"spool_id": spool_id})
    repaired.pop(BOOT_KEY, None)
    repaired["damaged"] = {
        "reason": problem,
        "recorded_size": (metadata or {}).get("size"),
        "recorded_sha256": (metadata or {}).get("sha256"),
    }
    if actual is not None:
        repaired.update(actual)
    repaired.setdefault("warnings", []).append(f"damaged in the spool: {problem}")
    return repaired


def _write_quarantine_state(spool: "Spool", spool_id: str, problem: str) -> None:

    state = spool.state(spool_id, QUEUE)
    state.last_error = f"damaged in the spool: {problem}"
    state.quarantined_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    spool.save_state(spool_id, state, QUEUE)
