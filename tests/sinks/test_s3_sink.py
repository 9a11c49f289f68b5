"""The s3 sink against a real S3 API over HTTP (moto's server mode), on asyncio and trio.

What an auditor would check: the bytes come back exactly, the metadata is
beside them, the store holds a SHA-256 checksum, encryption and Object Lock
reached the server, large messages went up in parts, and a retry never
makes a second copy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mailpipe.sinks.s3 import S3Sink
from mailpipe.sinks.s3_errors import IntegrityError, S3SinkError
from mailpipe.spool.queue import Spool, SpooledMessage
from mailpipe.types import SinkContext

pytestmark = [pytest.mark.anyio, pytest.mark.peer]

BUCKET = "mail-archive"
RAW = b"Subject: evidence\r\nFrom: a@example.com\r\n\r\nbody \x00 NUL, \xff 8-bit,\nbare LF\r\n.\r\n"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_sink(s3: Any, tmp_path: Path, **settings: Any) -> S3Sink:
    table = {"bucket": BUCKET, "endpoint_url": s3.endpoint_url, "prefix": "journal", **settings}
    return S3Sink("s3", table, SinkContext(str(tmp_path), str(tmp_path)))


def metadata(**extra: Any) -> dict[str, Any]:
    return {
        "connection_id": "c0ffee",
        "connection_type": "smtp_o365",
        "provenance": "smtp",
        "received_at": "2024-05-06T07:08:09.000001+00:00",
        "smtp": {"peer_ip": "127.0.0.1", "helo": "exchange", "mail_from": "j@example.com",
                 "rcpt_to": ["x@journal.test"], "proxied_ip": None, "queue_id": "Q1"},
        **extra,
    }


def objects(client: Any, bucket: str = BUCKET) -> dict[str, dict[str, Any]]:
    listing = client.list_objects_v2(Bucket=bucket)
    return {item["Key"]: item for item in listing.get("Contents", [])}


def versions(client: Any, bucket: str = BUCKET) -> list[str]:
    return sorted(v["Key"] for v in client.list_object_versions(Bucket=bucket).get("Versions", []))


def read(client: Any, key: str, bucket: str = BUCKET) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


async def test_round_trip_is_byte_exact_with_metadata_and_checksum(moto_s3: Any, tmp_path: Path) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    spool = Spool(tmp_path / "spool")
    message = await spool.write_bytes(RAW, metadata(journal={"recipients": ["bcc@example.com"]}))
    sink = make_sink(moto_s3, tmp_path)
    try:
        await sink.store(message)
    finally:
        await sink.aclose()

    base = f"journal/c0ffee/2024/05/06/{message.sha256}"
    assert set(objects(admin)) == {f"{base}.eml", f"{base}.json"}
    assert read(admin, f"{base}.eml") == RAW
    head = admin.head_object(Bucket=BUCKET, Key=f"{base}.eml", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == b64(message.sha256)
    assert head["ContentType"] == "message/rfc822"
    assert head["Metadata"]["sha256"] == message.sha256

    stored = json.loads(read(admin, f"{base}.json"))
    assert stored["sha256"] == message.sha256 and stored["size"] == len(RAW)
    assert stored["journal"] == {"recipients": ["bcc@example.com"]}
    assert stored["connection_id"] == "c0ffee"
    (arrival,) = stored["arrivals"]
    assert arrival["spool_id"] == message.id
    assert arrival["smtp"]["rcpt_to"] == ["x@journal.test"]
    json_head = admin.head_object(Bucket=BUCKET, Key=f"{base}.json", ChecksumMode="ENABLED")
    assert json_head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(read(admin, f"{base}.json")).digest()).decode()


@pytest.mark.parametrize("conditional_writes", [True, False])
async def test_retries_and_second_arrivals_make_no_second_copy(
    moto_s3: Any, tmp_path: Path, conditional_writes: bool
) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    # versioning makes every PUT visible: one version per key proves one upload per key
    admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    spool = Spool(tmp_path / "spool")
    first = await spool.write_bytes(RAW, metadata())
    again = await spool.write_bytes(RAW, metadata(smtp={"peer_ip": "127.0.0.2"}))
    sink = make_sink(moto_s3, tmp_path, conditional_writes=conditional_writes)
    try:
        await sink.store(first)
        await sink.store(first)  # a retry after a crash
        base = f"journal/c0ffee/2024/05/06/{first.sha256}"
        assert versions(admin) == [f"{base}.eml", f"{base}.json"]
        await sink.store(again)  # the same bytes again (another journal report copy)
        await sink.store(again)
    finally:
        await sink.aclose()
    eml_versions = [v for v in versions(admin) if v.endswith(".eml")]
    assert eml_versions == [f"{base}.eml"]
    stored = json.loads(read(admin, f"{base}.json"))
    assert [a["spool_id"] for a in stored["arrivals"]] == [first.id, again.id]


async def test_a_damaged_object_under_the_name_is_replaced(moto_s3: Any, tmp_path: Path) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    spool = Spool(tmp_path / "spool")
    message = await spool.write_bytes(RAW, metadata())
    key = f"journal/c0ffee/2024/05/06/{message.sha256}.eml"
    admin.put_object(Bucket=BUCKET, Key=key, Body=RAW[:-3])  # truncated, no checksum
    sink = make_sink(moto_s3, tmp_path)
    try:
        await sink.store(message)
    finally:
        await sink.aclose()
    assert read(admin, key) == RAW


async def test_a_damaged_spool_copy_is_not_archived(moto_s3: Any, tmp_path: Path) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    spool = Spool(tmp_path / "spool")
    message = await spool.write_bytes(RAW, metadata())
    message.path.write_bytes(RAW.replace(b"evidence", b"evidencE"))
    sink = make_sink(moto_s3, tmp_path)
    try:
        with pytest.raises(IntegrityError, match="hashes to .* but it was received as"):
            await sink.store(message)
    finally:
        await sink.aclose()
    assert objects(admin) == {}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"sse": "AES256", "storage_class": "STANDARD_IA"},
         {"ServerSideEncryption": "AES256", "StorageClass": "STANDARD_IA"}),
        ({"sse": "aws:kms", "kms_key_id": "alias/mail-archive"},
         {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/mail-archive"}),
    ],
)
async def test_encryption_and_storage_class_reach_the_server(
    moto_s3: Any, tmp_path: Path, settings: dict[str, Any], expected: dict[str, str]
) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    message = await Spool(tmp_path / "spool").write_bytes(RAW, metadata())
    sink = make_sink(moto_s3, tmp_path, **settings)
    try:
        await sink.store(message)
    finally:
        await sink.aclose()
    for key in objects(admin):
        head = admin.head_object(Bucket=BUCKET, Key=key)
        assert {name: head.get(name) for name in expected} == expected, key


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
async def test_object_lock_reaches_the_server(moto_s3: Any, tmp_path: Path, mode: str) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    message = await Spool(tmp_path / "spool").write_bytes(RAW, metadata())
    sink = make_sink(moto_s3, tmp_path, object_lock_mode=mode, object_lock_days=30, legal_hold=True)
    try:
        assert (await sink.test()).ok
        await sink.store(message)
        await sink.store(message)  # a retry must not trip over the lock
    finally:
        await sink.aclose()
    import datetime

    for key in objects(admin):
        head = admin.head_object(Bucket=BUCKET, Key=key)
        assert head["ObjectLockMode"] == mode
        assert head["ObjectLockLegalHoldStatus"] == "ON"
        retain = head["ObjectLockRetainUntilDate"] - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(days=29) < retain <= datetime.timedelta(days=30)


async def test_object_lock_on_a_bucket_without_it_fails_with_advice(moto_s3: Any, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    message = await Spool(tmp_path / "spool").write_bytes(RAW, metadata())
    sink = make_sink(moto_s3, tmp_path, object_lock_mode="COMPLIANCE", object_lock_days=1, max_attempts=1)
    try:
        with pytest.raises(S3SinkError, match="does not have Object Lock enabled"):
            await sink.store(message)
        result = await sink.test()
    finally:
        await sink.aclose()
    assert not result.ok and "Object Lock is not enabled on bucket 'mail-archive'" in result.error


@pytest.mark.parametrize("checksum_mode", ["when_supported", "when_required"])
async def test_multipart_for_a_20_mb_message_streams_from_the_spool(
    moto_s3: Any, tmp_path: Path, checksum_mode: str
) -> None:
    admin = moto_s3.client()
    admin.create_bucket(Bucket=BUCKET)
    admin.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    big = os.urandom(20 * 1000 * 1000)
    message = await Spool(tmp_path / "spool").write_bytes(big, metadata())
    sink = make_sink(moto_s3, tmp_path, checksum_mode=checksum_mode, multipart_part_size="8 MiB")
    try:
        await sink.store(message)
        await sink.store(message)  # HEAD first: already stored, not sent again
    finally:
        await sink.aclose()
    key = f"journal/c0ffee/2024/05/06/{message.sha256}.eml"
    head = admin.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # 8 MiB + 8 MiB + the rest
    assert head["ContentLength"] == len(big)
    assert head["Metadata"]["sha256"] == message.sha256
    digests = [hashlib.sha256(big[i:i + 8 * 1024 * 1024]).digest() for i in range(0, len(big), 8 * 1024 * 1024)]
    composite = base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode()
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert hashlib.sha256(read(admin, key)).hexdigest() == message.sha256
    assert [v for v in versions(admin) if v.endswith(".eml")] == [key]
    assert admin.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


async def test_unreachable_store_fails_with_advice_and_no_secret(
    moto_s3: Any, tmp_path: Path, aws_credentials: dict[str, str]
) -> None:
    from tests.support.helpers import free_port

    message: SpooledMessage = await Spool(tmp_path / "spool").write_bytes(RAW, metadata())
    sink = S3Sink(
        "s3",
        {"bucket": BUCKET, "endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1},
        SinkContext(str(tmp_path), str(tmp_path)),
    )
    try:
        with pytest.raises(S3SinkError) as caught:
            await sink.store(message)
    finally:
        await sink.aclose()
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in str(caught.value)
    assert "check endpoint_url" in str(caught.value)
    assert aws_credentials["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)


async def test_a_hung_store_times_out_with_advice(moto_s3: Any, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    message = await Spool(tmp_path / "spool").write_bytes(RAW, metadata())
    sink = make_sink(moto_s3, tmp_path, read_timeout=1, connect_timeout=1, max_attempts=1)
    moto_s3.pause()  # accepts connections, never answers
    try:
        with pytest.raises(S3SinkError, match="did not answer in time .* raise read_timeout or lower max_concurrency"):
            await sink.store(message)
    finally:
        moto_s3.resume()
        await sink.aclose()
