"""The filesystem sink: raw bytes, content-addressed, atomic, idempotent.

Layout under ``path``::

    <connection id>/<sha256[:2]>/<sha256>.eml    the message, byte for byte
    <connection id>/<sha256[:2]>/<sha256>.json   metadata: facts and every arrival

Each connection keeps its own copy. The same bytes arriving twice for one
connection (an SMTP retry, the failover path, a re-delivery after a crash)
are stored once; the metadata lists every arrival, keyed by spool id so a
retried delivery does not add a second one (an IMAP message re-collected
after a crash is the same arrival too: same mailbox, UIDVALIDITY and UID).

Writes go to a temporary file, are fsynced, renamed into place, and the
directory is fsynced: a reader sees the whole message or nothing.

When the archive is on the spool's filesystem (the default layout: both
under the data directory), a message file is not copied: the spooled file,
already durable, gets a second name in the archive (a hard link), and the
spool then drops its own name (the spool never reuses a file that has
another name). Only the names and the metadata are written; a batch of new
messages needs one filesystem sync instead of two. Elsewhere (another
filesystem, or links refused) the bytes are copied.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import anyio.to_thread

from mailpipe import hookimpl
from mailpipe.spool.durability import SYNCFS, sync_filesystem_of
from mailpipe.errors import MessageRejected, SinkUnavailable
from mailpipe.common.permissions import group_id, secure_directory
from mailpipe.common.small_files import read_small_file, write_new_file
from mailpipe.pipeline.sink_batch import store_each
from mailpipe.spool.queue import CHUNK_SIZE, SpooledMessage, fsync_directory, unlink_if_present
from mailpipe.types import ArchivedMessage, Failure, Mismatch, Setting, SinkContext, SinkType, TestResult

log = logging.getLogger("mailpipe.sinks.filesystem")

#: Errors that say "this file cannot be stored here" rather than "the disk is unwell".
REJECTING_ERRNOS = {errno.ENAMETOOLONG, errno.EFBIG}

#: Facts that describe one arrival rather than the message itself.
ARRIVAL_KEYS = (
    "spool_id",
    "received_at",
    "provenance",
    "connection_id",
    "connection_type",
    "smtp",
    "imap",
    "source",
    "notes",
    "via_connection",
)


class FilesystemSink:
    def __init__(self, name: str, settings: dict[str, Any], context: SinkContext) -> None:
        if not settings.get("path"):
            raise ValueError(f"sink {name!r}: the filesystem sink needs path = \"...\"")
        self.name = name
        root = Path(settings["path"]).expanduser()
        self.root = root if root.is_absolute() else Path(context.config_dir) / root
        self.fsync = bool(settings.get("fsync", True))
        self._stripes = [threading.Lock() for _ in range(64)]
        self._root_text = str(self.root)
        self._made_directories: set[str] = set()
        self._linking = bool(settings.get("link_from_spool", True))
        self._group = context.group
        self._root_prepared = False
        self._prepare_lock = threading.Lock()

    # --- storing -----------------------------------------------------------

    async def store(self, message: SpooledMessage) -> None:
        try:
            await anyio.to_thread.run_sync(self._store, message)
        except OSError as error:
            raise self.classified(error) from error

    async def store_batch(self, messages: list[SpooledMessage]) -> dict[str, Failure]:
        """Store many messages with one pair of filesystem syncs (see
        mailpipe.spool.durability); returns ``{spool id: error}`` for failures."""
        if SYNCFS is None or not self.fsync:
            return await store_each(self, messages)
        try:
            return await anyio.to_thread.run_sync(self._store_batch, messages)
        except OSError as error:  # the batch's rename or sync: nothing of it is stored
            raise self.classified(error) from error

    def classified(self, error: OSError) -> Exception:
        """The sink contract's two failures: a name or a file this filesystem
        refuses is the message's problem; anything else (full, read-only,
        permissions, I/O errors) is the archive's, and mail waits for it."""
        text = f"cannot write under {self.root}: {error}"
        if error.errno in REJECTING_ERRNOS:
            return MessageRejected(text)
        return SinkUnavailable(text)

    def _store_batch(self, messages: list[SpooledMessage]) -> dict[str, Failure]:
        # Plain strings for paths here: pathlib's objects cost more than the
        # file-system calls they name, at thousands of messages a second.
        errors: dict[str, Failure] = {}
        renames: list[tuple[str, str]] = []
        planned_json: dict[str, dict[str, Any]] = {}
        planned_eml: set[str] = set()
        renamed = 0
        # Bytes under a temporary name must be durable before the rename
        # that makes them visible: copies, and metadata merged into an
        # existing file. Links and new metadata files need not wait: a crash
        # before the batch's sync leaves the message in the spool, and its
        # next delivery rewrites whatever the crash cut short.
        sync_before_renames = False

        def key_of(message: SpooledMessage) -> tuple[str, str]:
            return (str(message.metadata.get("connection_id") or "unknown"), message.sha256)

        # Every stripe the batch needs, taken in index order: two concurrent
        # batches never wait for each other in a circle.
        stripes = sorted({self._stripe_index(*key_of(m)) for m in messages})
        for index in stripes:
            self._stripes[index].acquire()
        try:
            for message in messages:
                try:
                    stem = self._stem(key_of(message)[0], message.sha256)
                    eml = stem + ".eml"
                    # The link itself says whether the archive has the message
                    # (EEXIST): no stat before it.
                    if eml not in planned_eml:
                        if not self._link(message, eml) and not os.path.exists(eml):
                            renames.append((self._write_temporary(eml, message.chunks()), eml))
                            sync_before_renames = True
                        planned_eml.add(eml)
                    meta_path = stem + ".json"
                    existing = planned_json.get(meta_path) or _read_archived_json(meta_path)
                    if existing and meta_path not in planned_json:
                        sync_before_renames = True
                    merged = merge_metadata(existing, message.metadata)
                    if merged != existing:
                        planned_json[meta_path] = merged
                except OSError as error:
                    self._made_directories.clear()  # someone may have removed them
                    errors[message.id] = self.classified(error)
            for meta_path, merged in planned_json.items():
                renames.append((self._write_temporary(meta_path, [encode_metadata(merged)]), meta_path))
            if sync_before_renames:
                sync_filesystem_of(self.root)
            for done, (temporary, final) in enumerate(renames, start=1):
                os.rename(temporary, final)
                renamed = done
            sync_filesystem_of(self.root)
        finally:
            for temporary, _final in renames[renamed:]:
                unlink_if_present(temporary)
            for index in stripes:
                self._stripes[index].release()
        return errors

    def _link(self, message: SpooledMessage, eml: str) -> bool:
        """Give the spooled file its archive name; True also when the archive
        already has one. False where linking cannot be done (then copy)."""
        if not self._linking:
            return False
        try:
            os.link(message.path, eml)
        except FileExistsError:
            return True  # stored by an earlier delivery that a crash interrupted
        except OSError:
            # Another filesystem (EXDEV) or no hard links here: copy from now on.
            self._linking = False
            return False
        return True

    def _stem(self, connection_id: str, sha256: str) -> str:
        """``<root>/<connection>/<sha256[:2]>/<sha256>``, its directory made."""
        directory = f"{self._root_text}/{_safe(connection_id)}/{sha256[:2]}"
        if not self._root_prepared:
            self._prepare_root()
        if directory not in self._made_directories:
            os.makedirs(directory, exist_ok=True)
            self._made_directories.add(directory)
        return f"{directory}/{sha256}"

    def _prepare_root(self) -> None:
        """Once per process, before its first write: an owner-only (or the
        configured group's) archive root, and no temporary files left by a
        process killed mid-write (only this process writes the archive, and
        it has written nothing yet)."""
        with self._prepare_lock:
            if self._root_prepared:
                return
            try:
                secure_directory(self.root, group_id(self._group))
            except PermissionError as error:  # a root owned by someone else: store anyway, say so
                self.root.mkdir(parents=True, exist_ok=True)
                log.warning(
                    "cannot set the archive directory's permissions; check who may read it",
                    extra={"path": self._root_text, "error": str(error)},
                )
            removed = 0
            for leftover in self.root.glob("*/??/.*.tmp"):
                unlink_if_present(leftover)
                removed += 1
            if removed:
                log.info("removed temporary files an interrupted write left in the archive",
                         extra={"path": self._root_text, "count": removed})
            self._root_prepared = True

    def _eml_path(self, connection_id: str, sha256: str) -> Path:
        return Path(self._stem(connection_id, sha256) + ".eml")

    def _store(self, message: SpooledMessage) -> None:
        connection_id = str(message.metadata.get("connection_id") or "unknown")
        eml = self._eml_path(connection_id, message.sha256)
        with self._stripe(connection_id, message.sha256):
            if not eml.exists():
                self._write_atomically(eml, message.chunks())
            meta_path = eml.with_suffix(".json")
            existing = _read_json(meta_path)
            merged = merge_metadata(existing, message.metadata)
            if merged != existing:
                self._write_atomically(meta_path, iter([encode_metadata(merged)]))

    def _write_atomically(self, path: Path, chunks: Iterable[bytes]) -> None:
        tmp = self._write_temporary(str(path), chunks, fsync=self.fsync)
        try:
            os.rename(tmp, path)
        finally:
            unlink_if_present(tmp)
        if self.fsync:
            fsync_directory(path.parent)

    def _write_temporary(self, path: str, chunks: Iterable[bytes], fsync: bool = False) -> str:
        """Write beside ``path`` under a hidden temporary name."""
        directory, name = os.path.split(path)
        tmp = f"{directory}/.{name}.{secrets.token_hex(4)}.tmp"
        try:
            write_new_file(tmp, chunks, fsync)
        except BaseException:
            unlink_if_present(tmp)
            raise
        return tmp

    def _stripe_index(self, connection_id: str, sha256: str) -> int:
        """Which lock guards one archived message's metadata merge.

        Only the server's pipeline writes the archive, so locks in this
        process suffice; striping keeps their number fixed.
        """
        return hash((connection_id, sha256)) % len(self._stripes)

    def _stripe(self, connection_id: str, sha256: str) -> threading.Lock:
        return self._stripes[self._stripe_index(connection_id, sha256)]

    # --- checking ----------------------------------------------------------

    async def test(self) -> TestResult:
        def probe() -> TestResult:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self._write_atomically(self.root / ".write-test", iter([b"ok"]))
                (self.root / ".write-test").unlink()
            except OSError as error:
                return TestResult(
                    ok=False,
                    error=f"cannot write under {self.root}: {error.strerror or error}; "
                    "check the path and its permissions",
                )
            return TestResult(ok=True, details={"path": str(self.root)})

        return await anyio.to_thread.run_sync(probe)

    async def aclose(self) -> None:
        return None

    # --- reading (archive list / show / verify) ------------------------------
    # Reading never creates anything: an archive that does not exist yet is
    # an empty one.

    def entries(self) -> Iterator[ArchivedMessage]:
        for meta_path in self._metadata_paths():
            yield self._entry(meta_path)

    def _metadata_paths(self) -> list[Path]:
        if not self.root.exists():
            return []
        return [p for p in sorted(self.root.glob("*/??/*.json")) if not p.name.startswith(".")]

    def _entry(self, meta_path: Path) -> ArchivedMessage:
        archive_id = f"{meta_path.parent.parent.name}/{meta_path.stem}"
        return ArchivedMessage(archive_id, meta_path.with_suffix(".eml"), _read_json(meta_path))

    def find(self, archive_id: str) -> list[ArchivedMessage]:
        """By ``connection/sha256``, by sha256, or by a prefix of either: every
        match (the caller refuses an ambiguous prefix), or only the exact
        ``connection/sha256`` when that is what was given."""
        matches = [
            entry
            for entry in self.entries()
            if entry.id.startswith(archive_id) or entry.id.split("/", 1)[1].startswith(archive_id)
        ]
        exact = [entry for entry in matches if entry.id == archive_id]
        return exact or matches

    def count(self) -> int:
        return len(self._metadata_paths())

    def verify(self, on_checked: Callable[[], None] | None = None) -> tuple[int, list[Mismatch]]:
        """Re-hash every message; ``on_checked`` is called after each one
        (the CLI's progress display)."""
        checked, mismatches = 0, []
        for entry in self.entries():
            checked += 1
            problem = check_entry(entry)
            if problem:
                mismatches.append(problem)
            if on_checked:
                on_checked()
        return checked, mismatches


def check_entry(entry: ArchivedMessage) -> Mismatch | None:
    """Does the message file still hash to the name and metadata it has?"""
    expected = entry.eml_path.stem
    if not entry.eml_path.exists():
        return Mismatch(entry.id, "message file is missing")
    actual = sha256_of(entry.eml_path)
    if actual != expected:
        return Mismatch(entry.id, f"content hash is {actual}, the name and metadata say {expected}")
    if entry.metadata.get("sha256") not in (None, expected):
        return Mismatch(entry.id, "metadata sha256 differs from the message")
    return None


def merge_metadata(existing: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """Message facts from the first arrival; every arrival recorded once."""
    arrival = {key: incoming[key] for key in ARRIVAL_KEYS if key in incoming}
    if not existing:
        facts = {key: value for key, value in incoming.items() if key not in ARRIVAL_KEYS}
        facts.pop("enriched", None)
        facts["connection_id"] = incoming.get("connection_id")
        facts["connection_type"] = incoming.get("connection_type")
        facts["arrivals"] = [arrival]
        return facts
    merged = dict(existing)
    arrivals = list(existing.get("arrivals", []))
    if not any(_same_arrival(a, arrival) for a in arrivals):
        arrivals.append(arrival)
    merged["arrivals"] = arrivals
    return merged


def _same_arrival(recorded: dict[str, Any], arrival: dict[str, Any]) -> bool:
    """One spool id is one arrival; so is one IMAP message (same connection,
    mailbox, UIDVALIDITY and UID) spooled again because a crash came between
    its spooling and the collector's checkpoint."""
    if recorded.get("spool_id") == arrival.get("spool_id"):
        return True
    return bool(arrival.get("imap")) and all(
        recorded.get(key) == arrival.get(key) for key in ("imap", "connection_id", "provenance")
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _read_archived_json(path: str) -> dict[str, Any]:
    """The metadata already archived beside a message, for merging. A file
    that is not JSON can only be a new one that a crash cut short before its
    sync (an existing one is synced before it is replaced): it is rewritten."""
    try:
        return _read_json(path)
    except ValueError:
        log.warning("archived metadata was cut short by a crash; rewriting it", extra={"path": str(path)})
        return {}


def _read_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(read_small_file(os.fspath(path)))
    except FileNotFoundError:
        return {}


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """The archived ``.json``: one line of UTF-8, keys sorted (compact, so
    that json's C encoder writes it; ``jq .`` shows it indented)."""
    return json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "unknown"


@hookimpl
def mailpipe_sink_types() -> list[SinkType]:
    return [
        SinkType(
            name="filesystem",
            description="Raw messages and metadata JSON in a directory, content-addressed by SHA-256",
            factory=FilesystemSink,
            settings=(
                Setting("path", "path", required=True, help="directory of the archive"),
                Setting("fsync", "bool", default=True, help="fsync files and directories (keep true)"),
                Setting(
                    "link_from_spool", "bool", default=True,
                    help="hard-link spooled messages into the archive when it is on the spool's "
                    "filesystem, instead of copying them",
                ),
            ),
        )
    ]
