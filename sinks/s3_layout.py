"""Where a message goes in the bucket, and how its checksums are spelled.

Key layout (documented in docs/sinks.md)::

    <prefix><connection id>/<yyyy>/<mm>/<dd>/<sha256>.eml   the message, byte for byte
    <prefix><connection id>/<yyyy>/<mm>/<dd>/<sha256>.json  metadata: facts and every arrival

The date is the UTC day the message arrived (``received_at``), so a
lifecycle rule or an auditor's export can select days by prefix; the name
is the SHA-256 of the bytes, so the same bytes arriving twice on one day
for one connection are one object.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mailpipe.sinks.filesystem import _safe as safe_segment
from mailpipe.spool.queue import CHUNK_SIZE, SpooledMessage


@dataclass(frozen=True)
class MessageKeys:
    eml: str
    json: str


def keys_for(prefix: str, message: SpooledMessage) -> MessageKeys:
    connection_id = safe_segment(str(message.metadata.get("connection_id") or "unknown"))
    day = arrival_day(message.metadata.get("received_at"))
    base = f"{prefix}{connection_id}/{day:%Y/%m/%d}/{message.sha256}"
    return MessageKeys(eml=f"{base}.eml", json=f"{base}.json")


def arrival_day(received_at: Any) -> datetime:
    """The UTC day of arrival; a missing or odd timestamp falls back to today
    rather than failing the delivery (the bytes matter more than the folder)."""
    if isinstance(received_at, str):
        try:
            parsed = datetime.fromisoformat(received_at)
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.astimezone(timezone.utc)
    return datetime.now(timezone.utc)


def sha256_base64(hex_digest: str) -> str:
    """S3 spells SHA-256 checksums as base64 of the raw digest; the spool keeps hex."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def composite_checksum(part_digests: list[bytes]) -> str:
    """The checksum S3 reports for a multipart object (COMPOSITE type):
    SHA-256 of the concatenated raw part digests, base64, with '-<parts>'."""
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(combined).decode('ascii')}-{len(part_digests)}"


def strip_part_count(checksum: str | None) -> str:
    """Some stores (and moto) omit the '-N' suffix of a composite checksum."""
    return (checksum or "").split("-", 1)[0]


@dataclass(frozen=True)
class Part:
    number: int
    offset: int
    length: int


def plan_parts(size: int, part_size: int, max_parts: int = 10_000) -> list[Part]:
    """Equal parts of ``part_size`` (grown if the message would need more than
    ``max_parts``), the last one shorter."""
    while -(-size // part_size) > max_parts:
        part_size *= 2
    parts, offset, number = [], 0, 1
    while offset < size:
        length = min(part_size, size - offset)
        parts.append(Part(number, offset, length))
        offset += length
        number += 1
    return parts


class FileSlice(io.RawIOBase):
    """A read-only, seekable window onto part of a file.

    botocore reads a request body in chunks and seeks back to retry; giving
    it a window of the spool file sends a part straight from disk, so a
    150 MB message never sits in memory.
    """

    def __init__(self, path: os.PathLike[str] | str, offset: int, length: int) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._start = offset
        self._length = length
        self._position = 0
        self._file.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        self._file.seek(self._start + self._position)
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        data = self._file.read(size)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def sha256(self) -> bytes:
        """Digest of the window, read in spool-sized chunks; leaves the position at 0."""
        digest = hashlib.sha256()
        self.seek(0)
        while chunk := self.read(CHUNK_SIZE):
            digest.update(chunk)
        self.seek(0)
        return digest.digest()

    def close(self) -> None:
        self._file.close()
        super().close()
