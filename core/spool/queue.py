"""The durable spool: nothing is acknowledged before it is here and fsynced.

Layout under ``<data_dir>/spool``::

    tmp/          messages being received (cleared at start: never acknowledged)
    free/         files of delivered messages, kept to be reused (see recycle.py)
    queue/        ID.eml (raw bytes), ID.json (metadata), ID.state.json (delivery progress)
    quarantine/   the same three files, for messages that kept failing

A message is committed by: fsync of ID.eml, rename into queue/, write and
fsync ID.json, rename into queue/, fsync of queue/. ID.json is the commit
mark: an ID.eml without it was never acknowledged and is removed on start.
SMTP and the collectors commit whole batches with one filesystem sync
instead (group_commit.py; its marks are checked after a machine restart:
spool_check.py).

The spool is written on anyio; the blocking calls run in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterable, Callable, Iterable, Iterator

import anyio
import anyio.to_thread

from mailpipe.common.small_files import read_small_file
from mailpipe.spool.disk_space import DiskSpace
from mailpipe.spool.recycle import FileRecycler, unlink_if_present
from mailpipe.spool.check import check_after_reboot
from mailpipe.spool.durability import fsync_directory, write_json_durably  # noqa: F401  (importers of the spool)
from mailpipe.spool.layout import BOOT_KEY, FREE, QUARANTINE, QUEUE, TMP  # noqa: F401  (importers of the spool)

CHUNK_SIZE = 256 * 1024


def new_spool_id() -> str:
    """Sortable by arrival (milliseconds), unique by 48 random bits (from a
    generator seeded by the OS in each process: an id needs to be unique,
    not secret, and a system call per message for it is wasted)."""
    return f"{int(time.time() * 1000):012x}{_id_random().getrandbits(48):012x}"


_ID_RANDOM: tuple[int, random.Random] | None = None


def _id_random() -> random.Random:
    global _ID_RANDOM
    if _ID_RANDOM is None or _ID_RANDOM[0] != os.getpid():  # a forked child reseeds
        _ID_RANDOM = (os.getpid(), random.Random(os.urandom(16)))
    return _ID_RANDOM[1]


@dataclass
class SpooledMessage:
    id: str
    path: Path
    metadata: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.metadata["size"])

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := handle.read(size):
                yield chunk


@dataclass
class DeliveryState:
    """Per-message progress: which sinks confirmed, how often it failed."""

    attempts: int = 0  # every failed delivery
    # Failures blamed on the message (rejected, or an unknown error): these
    # count toward max_attempts. Outages do not (mailpipe.pipeline.delivery).
    message_failures: int = 0
    outage_since: float | None = None  # first failure of the current outage
    stored_in: list[str] = field(default_factory=list)
    next_attempt: float = 0.0
    last_error: str = ""
    quarantined_at: str | None = None
    on_disk: bool = False  # read from an ID.state.json (not itself stored)

    def to_json(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        data.pop("on_disk")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DeliveryState":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "on_disk"})


class _DirectorySync:
    """Coalesces fsyncs of one directory across concurrent commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requested = 0
        self.completed = 0
        self.lock = anyio.Lock()

    async def sync(self) -> None:
        self.requested += 1
        ticket = self.requested
        async with self.lock:
            if self.completed >= ticket:
                return
            covered = self.requested
            await anyio.to_thread.run_sync(fsync_directory, self.path)
            self.completed = covered


class SpoolWriter:
    """Receives one message in pieces; ``commit`` makes it durable.

    ``write`` is synchronous and cheap (buffered into the page cache) so a
    protocol handler can call it from the event loop as data arrives; the
    fsyncs happen in ``commit``, in a worker thread.
    """

    def __init__(self, spool: "Spool", metadata: dict[str, Any]) -> None:
        self.spool = spool
        self.id = new_spool_id()
        self.metadata = dict(metadata)
        self._tmp_path = f"{spool.root_text}/{TMP}/{self.id}.eml"
        descriptor, self._reused = spool.recycler.open_new(self._tmp_path)
        self._file = open(descriptor, "wb", buffering=CHUNK_SIZE)
        self._hash = hashlib.sha256()
        self.size = 0
        self.done = False

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close_file(self, fsync: bool) -> None:
        """Flush and close the message file, cut to what was written (a
        reused file may be longer), optionally fsynced."""
        self._file.flush()
        if self._reused:
            os.ftruncate(self._file.fileno(), self.size)
        if fsync:
            os.fsync(self._file.fileno())
        self._file.close()

    def final_metadata(self, **extra_metadata: Any) -> dict[str, Any]:
        """The metadata the message is committed with: the caller's, plus
        what only the writer knows once the last byte is in."""
        metadata = {
            **self.metadata,
            **extra_metadata,
            "spool_id": self.id,
            "size": self.size,
            "sha256": self._hash.hexdigest(),
        }
        metadata.setdefault("received_at", utc_now_text())
        return metadata

    async def write_all_async(self, chunks: Iterable[bytes] | AsyncIterable[bytes]) -> None:
        """Write chunks from a plain or an async iterable."""
        if hasattr(chunks, "__aiter__"):
            async for chunk in chunks:  # type: ignore[union-attr]
                self.write(chunk)
        else:
            for chunk in chunks:  # type: ignore[union-attr]
                self.write(chunk)

    async def commit(self, **extra_metadata: Any) -> SpooledMessage:
        metadata = self.final_metadata(**extra_metadata)
        await anyio.to_thread.run_sync(self._make_durable, metadata)
        await self.spool.queue_sync.sync()
        self.done = True
        message = SpooledMessage(self.id, self.spool.root / QUEUE / f"{self.id}.eml", metadata)
        self.spool.announce(message)
        return message

    def _make_durable(self, metadata: dict[str, Any]) -> None:
        self.close_file(fsync=True)
        queue = self.spool.root / QUEUE
        os.rename(self._tmp_path, queue / f"{self.id}.eml")
        write_json_durably(queue / f"{self.id}.json", metadata, self.spool.root / TMP)

    def abort(self) -> None:
        """Forget a message that was not acknowledged (client went away, too big...)."""
        if self.done:
            return
        self.done = True
        try:
            self._file.close()
        except OSError:
            # Its buffered tail could not be written (a full disk): nothing
            # is lost, the file is dropped, and the descriptor is closed anyway.
            pass
        self.spool.recycler.release(self._tmp_path)


class Spool:
    def __init__(self, root: Path, min_free_bytes: int | None = None) -> None:
        self.root = root
        for name in (QUEUE, QUARANTINE, TMP):
            (root / name).mkdir(parents=True, exist_ok=True)
        #: Free space on the spool's filesystem, against the reserve (disk_space.py).
        self.space = DiskSpace(root, min_free_bytes)
        self.recycler = FileRecycler(root / FREE, keeping=lambda: not self.space.low())
        self.root_text = str(root)  # for paths built on hot paths, where pathlib costs more than the call
        self.queue_sync = _DirectorySync(root / QUEUE)
        self._listeners: list[Callable[[SpooledMessage], None]] = []

    def readiness(self) -> str | None:
        """Why this spool cannot take new mail now ("disk full: ..."), or None
        when it can: for a readiness probe (``/readyz``). Cheap: statvfs at
        most once a second."""
        return self.space.reason()

    # --- writing ---------------------------------------------------------

    def writer(self, metadata: dict[str, Any]) -> SpoolWriter:
        return SpoolWriter(self, metadata)

    async def write_bytes(self, data: bytes, metadata: dict[str, Any]) -> SpooledMessage:
        writer = self.writer(metadata)
        try:
            writer.write(data)
            return await writer.commit()
        finally:
            writer.abort()

    async def write_chunks(
        self, chunks: Iterable[bytes] | AsyncIterable[bytes], metadata: dict[str, Any]
    ) -> SpooledMessage:
        writer = self.writer(metadata)
        try:
            await writer.write_all_async(chunks)
            return await writer.commit()
        finally:
            writer.abort()

    # --- notification ----------------------------------------------------

    def subscribe(self, listener: Callable[[SpooledMessage], None]) -> None:
        self._listeners.append(listener)

    def announce(self, message: SpooledMessage) -> None:
        for listener in self._listeners:
            listener(message)

    # --- reading and housekeeping ----------------------------------------

    def recover(self) -> int:
        """Drop what was never acknowledged; returns how many files went.
        After a restart of the machine, also check what the group committer
        wrote (mailpipe.spool.check)."""
        removed = 0
        for leftover in (self.root / TMP).iterdir():
            self.recycler.release(leftover)
            removed += 1
        queue = self.root / QUEUE
        for raw in queue.glob("*.eml"):
            if not raw.with_suffix(".json").exists():
                self.recycler.release(raw)
                removed += 1
        self.recycler.trim()
        for state in queue.glob("*.state.json"):
            if not (queue / state.name.replace(".state.json", ".json")).exists():
                state.unlink(missing_ok=True)
        check_after_reboot(self)
        return removed

    def pending(self, where: str = QUEUE) -> list[SpooledMessage]:
        """Committed messages, oldest first."""
        messages = []
        for meta_path in sorted((self.root / where).glob("*.json")):
            if meta_path.name.endswith(".state.json"):
                continue
            message = self.load(meta_path.stem, where)
            if message is not None:
                messages.append(message)
        return messages

    def pending_ids(self) -> set[str]:
        return {
            name[:-5]
            for name in os.listdir(self.root / QUEUE)
            if name.endswith(".json") and not name.endswith(".state.json")
        }

    def load(self, spool_id: str, where: str = QUEUE) -> SpooledMessage | None:
        directory = f"{self.root_text}/{where}"
        try:
            metadata = json.loads(read_small_file(f"{directory}/{spool_id}.json"))
        except FileNotFoundError:
            return None
        metadata.pop(BOOT_KEY, None)
        return SpooledMessage(spool_id, Path(f"{directory}/{spool_id}.eml"), metadata)

    def state(self, spool_id: str, where: str = QUEUE) -> DeliveryState:
        try:
            data = json.loads(read_small_file(f"{self.root_text}/{where}/{spool_id}.state.json"))
        except FileNotFoundError:
            return DeliveryState()
        state = DeliveryState.from_json(data)
        state.on_disk = True
        return state

    def save_state(self, spool_id: str, state: DeliveryState, where: str = QUEUE) -> None:
        state.on_disk = True
        write_json_durably(self.root / where / f"{spool_id}.state.json", state.to_json(), self.root / TMP)

    def remove(self, spool_id: str, has_state: bool = True) -> None:
        """Called only after every required sink confirmed."""
        queue = f"{self.root_text}/{QUEUE}"
        # The commit mark goes first: a crash in between leaves a bare .eml
        # that recover() discards, never a message that is delivered twice.
        self.recycler.release(f"{queue}/{spool_id}.json")
        self.recycler.release(f"{queue}/{spool_id}.eml")
        if has_state:
            unlink_if_present(f"{queue}/{spool_id}.state.json")

    def move(self, spool_id: str, source: str, destination: str) -> None:
        """Between queue/ and quarantine/; the metadata (commit mark) moves last."""
        src, dst = self.root / source, self.root / destination
        for suffix in (".eml", ".state.json", ".json"):
            path = src / f"{spool_id}{suffix}"
            if path.exists():
                os.rename(path, dst / path.name)
        fsync_directory(dst)
        fsync_directory(src)


def utc_now_text() -> str:
    """When a message was received, as its metadata records it."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
