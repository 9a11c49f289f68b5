"""The filesystem sink and `mailpipe archive list / show / verify`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.helpers import archived_files, cli
from mailpipe.sinks.filesystem import FilesystemSink
from mailpipe.spool.queue import Spool
from mailpipe.types import SinkContext

pytestmark = pytest.mark.anyio

ODD = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Raw: caf\xc3\xa9\r\n\r\nline\nbare LF\r\n\x00NUL\r\n.\r\n"


async def store_one(tmp_path: Path, raw: bytes, metadata: dict) -> FilesystemSink:  # type: ignore[type-arg]
    sink = FilesystemSink("fs", {"path": "archive"}, SinkContext(str(tmp_path), str(tmp_path)))
    message = await Spool(tmp_path / "spool").write_bytes(raw, metadata)
    await sink.store(message)
    await sink.store(message)  # a retry changes nothing
    return sink


async def test_byte_for_byte_content_addressed_idempotent(tmp_path: Path) -> None:
    sink = await store_one(tmp_path, ODD, {"connection_id": "c1", "provenance": "smtp",
                                           "smtp": {"peer_ip": "127.0.0.1", "mail_from": "a@b"}})
    [entry] = list(sink.entries())
    digest = hashlib.sha256(ODD).hexdigest()
    assert entry.id == f"c1/{digest}"
    assert entry.eml_path == tmp_path / "archive" / "c1" / digest[:2] / f"{digest}.eml"
    assert entry.eml_path.read_bytes() == ODD
    assert entry.metadata["sha256"] == digest and entry.metadata["size"] == len(ODD)
    assert len(entry.metadata["arrivals"]) == 1
    assert entry.metadata["arrivals"][0]["smtp"]["peer_ip"] == "127.0.0.1"
    assert not [p for p in (tmp_path / "archive").rglob("*.tmp")]


async def test_second_arrival_is_recorded_not_stored_twice(tmp_path: Path) -> None:
    sink = await store_one(tmp_path, ODD, {"connection_id": "c1", "provenance": "smtp"})
    again = await Spool(tmp_path / "spool").write_bytes(ODD, {"connection_id": "c1", "provenance": "imap_failover"})
    await sink.store(again)
    [entry] = list(sink.entries())
    assert [a["provenance"] for a in entry.metadata["arrivals"]] == ["smtp", "imap_failover"]


async def test_each_connection_keeps_its_own_copy(tmp_path: Path) -> None:
    sink = await store_one(tmp_path, ODD, {"connection_id": "c1"})
    await sink.store(await Spool(tmp_path / "spool").write_bytes(ODD, {"connection_id": "c2"}))
    assert sorted(e.id.split("/")[0] for e in sink.entries()) == ["c1", "c2"]


async def test_sink_test_reports_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = FilesystemSink("fs", {"path": str(blocker / "archive")}, SinkContext(str(tmp_path), str(tmp_path)))
    result = await sink.test()
    assert not result.ok and "cannot write under" in result.error


async def test_cli_archive_list_show_verify_detects_corruption(tmp_path: Path, config_path: Path) -> None:
    archive = config_path.parent / "archive"
    sink = FilesystemSink("fs", {"path": str(archive)}, SinkContext(str(tmp_path), str(tmp_path)))
    spool = Spool(tmp_path / "spool2")
    for body in (b"one", b"two", ODD):
        await sink.store(await spool.write_bytes(body, {"connection_id": "c9"}))
    listed = cli(config_path, "archive", "list", check=True).json["messages"]
    assert len(listed) == 3
    shown = cli(config_path, "archive", "show", listed[0]["sha256"][:12], check=True).json
    assert shown["metadata"]["sha256"] == listed[0]["sha256"]
    verified = cli(config_path, "archive", "verify", check=True).json
    assert (verified["checked"], verified["mismatches"], verified["ok"]) == (3, [], True)

    victim = archived_files(archive)[1]
    victim.write_bytes(victim.read_bytes() + b"tampered")
    result = cli(config_path, "archive", "verify")
    assert result.code == 1
    assert result.json["ok"] is False
    [mismatch] = result.json["mismatches"]
    assert mismatch["id"] == f"c9/{victim.stem}" and "content hash is" in mismatch["problem"]

    missing = cli(config_path, "archive", "show", "ffffffffff")
    assert missing.code == 1 and "no archived message matches" in missing.err


async def test_store_batch_is_exact_and_merges_arrivals_within_a_batch(tmp_path: Path) -> None:
    sink = FilesystemSink("fs", {"path": "archive"}, SinkContext(str(tmp_path), str(tmp_path)))
    spool = Spool(tmp_path / "spool")
    batch = [await spool.write_bytes(body, {"connection_id": conn})
             for body, conn in ((ODD, "c1"), (b"other", "c1"), (ODD, "c1"), (ODD, "c2"))]
    assert await sink.store_batch(batch) == {}
    assert await sink.store_batch(batch) == {}  # idempotent
    entries = {e.id: e for e in sink.entries()}
    digest = hashlib.sha256(ODD).hexdigest()
    assert sorted(entries) == sorted([f"c1/{digest}", f"c1/{hashlib.sha256(b'other').hexdigest()}", f"c2/{digest}"])
    assert entries[f"c1/{digest}"].eml_path.read_bytes() == ODD
    assert len(entries[f"c1/{digest}"].metadata["arrivals"]) == 2
    assert not [p for p in (tmp_path / "archive").rglob("*.tmp")]


async def test_temporary_files_of_a_killed_writer_are_removed_before_the_first_write(tmp_path: Path) -> None:
    """Issue 11, item 7: a kill -9 mid-write left `.NAME.json.XXXX.tmp` files for ever."""
    archive = tmp_path / "archive"
    leftovers = [archive / "c1" / "ab" / ".abcdef.json.0011aabb.tmp", archive / "c2" / "0f" / ".0f12.eml.99887766.tmp"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"cut short")
    kept = archive / "c1" / "ab" / "abcdef.json"
    kept.write_text("{}")
    sink = FilesystemSink("fs", {"path": str(archive)}, SinkContext(str(tmp_path), str(tmp_path)))
    message = await Spool(tmp_path / "spool").write_bytes(b"Subject: x\r\n\r\ny\r\n", {"connection_id": "c1"})
    await sink.store(message)
    assert not any(leftover.exists() for leftover in leftovers)
    assert kept.exists() and len(list(archive.glob("*/??/*.eml"))) == 1
