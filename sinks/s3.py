"""The ``s3`` sink: raw messages and metadata JSON in any S3-compatible store.

Each message becomes two objects (layout in ``s3_layout``, settings in
``s3_settings``, the operator's view in docs/sinks.md)::

    <prefix><connection>/<yyyy>/<mm>/<dd>/<sha256>.eml    byte for byte
    <prefix><connection>/<yyyy>/<mm>/<dd>/<sha256>.json   facts and every arrival

Integrity: the bytes are hashed as they are read from the spool and must
match the spool's SHA-256 before anything is sent; every upload carries
``ChecksumSHA256`` (S3 refuses the body if it differs) and the checksum the
store reports back is compared. Large messages go up in parts, streamed
from the spool file, each part with its own checksum.

Idempotence: the key is the content, so a retry finds its own object. A
small message is written with ``If-None-Match: *`` (one request); only when
that reports an existing object is it HEADed, and an object with the same
size and checksum counts as stored. A large one is HEADed first, since a
HEAD is cheaper than re-sending megabytes. The metadata JSON is merged
read-modify-write under ``If-Match`` so two arrivals never overwrite each
other's record.

boto3 blocks: every call runs in a worker thread, at most
``max_concurrency`` at once, on one shared client (boto3 clients are
thread-safe). Throttling, 5xx and connection errors are retried by botocore
(``max_attempts``) and then by the pipeline, while the message stays in the
spool: they, and refusals only the operator can fix (access denied, no such
bucket, bad credentials), are raised as ``SinkUnavailable`` (an outage, never
a quarantine); a 4xx about the message itself as ``MessageRejected``
(``s3_errors.failure_class``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

import anyio
import anyio.to_thread
import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mailpipe import hookimpl
from mailpipe.sinks.filesystem import merge_metadata
from mailpipe.sinks.s3_errors import (
    CONFLICT_CODES,
    NOT_FOUND_CODES,
    PRECONDITION_CODES,
    IntegrityError,
    S3SinkError,
    Where,
    explain,
    failure_class,
    is_code,
)
from mailpipe.sinks.s3_layout import (
    FileSlice,
    Part,
    composite_checksum,
    keys_for,
    plan_parts,
    safe_segment,
    sha256_base64,
    strip_part_count,
)
from mailpipe.sinks.s3_settings import MAX_PARTS, SETTINGS, S3Settings, parse_settings
from mailpipe.spool.queue import CHUNK_SIZE, SpooledMessage
from mailpipe.types import SinkContext, SinkType, TestResult

T = TypeVar("T")

#: Metadata merges of one key are serialised in this process; striped locks
#: keep that bounded however many keys pass through.
METADATA_LOCK_STRIPES = 64
METADATA_MERGE_ATTEMPTS = 5
#: How long a failed multipart upload may spend cleaning up after itself.
ABORT_UPLOAD_SECONDS = 10.0


class S3Sink:
    def __init__(self, name: str, settings: dict[str, Any], context: SinkContext) -> None:
        self.name = name
        self.settings: S3Settings = parse_settings(name, settings)
        self._session_lock = threading.RLock()
        self._session: boto3.session.Session | None = None
        self._client: BaseClient | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._metadata_locks: list[anyio.Lock] | None = None

    # --- boto3 plumbing ------------------------------------------------------

    @property
    def session(self) -> boto3.session.Session:
        with self._session_lock:
            if self._session is None:
                self._session = boto3.session.Session(profile_name=self.settings.profile)
            return self._session

    @property
    def client(self) -> BaseClient:
        """Built on first use (in a worker thread), not when the config is read:
        ``archive list`` builds every sink and should not pay for a client."""
        with self._session_lock:
            if self._client is None:
                self._client = self.make_client(self.settings.max_attempts)
            return self._client

    def make_client(self, max_attempts: int, timeouts: tuple[int, int] | None = None) -> BaseClient:
        settings = self.settings
        connect_timeout, read_timeout = timeouts or (settings.connect_timeout, settings.read_timeout)
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=settings.max_concurrency,
            request_checksum_calculation=settings.checksum_mode,
            response_checksum_validation=settings.checksum_mode,
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )
        with self._session_lock:  # a boto3 session is not thread-safe; its clients are
            return self.session.client(
                "s3", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config
            )

    def where(self) -> Where:
        """For error messages; never raises (it is called while explaining an error)."""
        try:
            credentials = self.session.get_credentials()
            source = getattr(credentials, "method", None) or "none found"
        except Exception as error:  # e.g. the configured profile does not exist
            source = f"unavailable: {error}"
        endpoint = self.settings.endpoint_url or f"Amazon S3 ({self.settings.region or 'default region'})"
        return Where(endpoint=endpoint, bucket=self.settings.bucket, credential_source=source)

    def _async_state(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.max_concurrency)
            self._metadata_locks = [anyio.Lock() for _ in range(METADATA_LOCK_STRIPES)]
        return self._limiter

    async def _run(self, action: str, key: str, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking boto3 step in a worker thread, at most ``max_concurrency`` at once.

        Abandoned on cancellation (shutdown): the thread finishes on its own,
        and the message, still spooled, is stored idempotently next time.
        """
        limiter = self._async_state()
        return await anyio.to_thread.run_sync(
            self._explained, action, key, function, *args, limiter=limiter, abandon_on_cancel=True
        )

    def _explained(self, action: str, key: str, function: Callable[..., T], *args: Any) -> T:
        """In the worker thread: finding the credential source for the message may block."""
        try:
            return function(*args)
        except S3SinkError:
            raise
        except (ClientError, BotoCoreError) as error:
            kind = failure_class(error)
            raise kind(f"sink {self.name!r}: {explain(error, action, self.where(), key)}") from error

    # --- storing ---------------------------------------------------------------

    async def store(self, message: SpooledMessage) -> None:
        self._async_state()
        keys = keys_for(self.settings.prefix, message)
        if message.size > self.settings.multipart_threshold:
            await self._store_large(message, keys.eml)
        else:
            await self._run("PutObject", keys.eml, self._put_small, message, keys.eml)
        assert self._metadata_locks is not None
        lock = self._metadata_locks[zlib.crc32(keys.json.encode()) % METADATA_LOCK_STRIPES]
        async with lock:
            await self._run("PutObject", keys.json, self._put_metadata, message, keys.json)

    def object_options(self, content_type: str) -> dict[str, Any]:
        """SSE, storage class and Object Lock, exactly as configured."""
        settings = self.settings
        options: dict[str, Any] = {"ContentType": content_type}
        if settings.sse:
            options["ServerSideEncryption"] = settings.sse
        if settings.kms_key_id:
            options["SSEKMSKeyId"] = settings.kms_key_id
        if settings.storage_class:
            options["StorageClass"] = settings.storage_class
        if settings.object_lock_mode and settings.object_lock_days:
            options["ObjectLockMode"] = settings.object_lock_mode
            options["ObjectLockRetainUntilDate"] = datetime.now(timezone.utc) + timedelta(
                days=settings.object_lock_days
            )
        if settings.legal_hold:
            options["ObjectLockLegalHoldStatus"] = "ON"
        return options

    def _put_checked(self, key: str, body: Any, checksum: str, options: dict[str, Any], **condition: str) -> None:
        response = self.client.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            **options,
            **condition,
        )
        self._confirm(response.get("ChecksumSHA256"), checksum, key)

    def _confirm(self, reported: str | None, expected: str, key: str) -> None:
        """A store that reports a checksum must report ours; one that reports
        none has either checked ours silently or ignores checksums."""
        if reported and strip_part_count(reported) != strip_part_count(expected):
            raise IntegrityError(
                f"sink {self.name!r}: s3://{self.settings.bucket}/{key} was stored with checksum "
                f"{reported}, expected {expected}; the upload was damaged in transit and will be retried"
            )

    def _put_small(self, message: SpooledMessage, key: str) -> None:
        data = message.path.read_bytes()
        self._check_spool_copy(message, hashlib.sha256(data).hexdigest())
        checksum = sha256_base64(message.sha256)
        options = self.object_options("message/rfc822")
        options["Metadata"] = _object_metadata(message)
        if not self.settings.conditional_writes:
            if not self._already_stored(message, key):
                self._put_checked(key, data, checksum, options)
            return
        try:
            self._put_checked(key, data, checksum, options, IfNoneMatch="*")
        except ClientError as error:
            if not is_code(error, PRECONDITION_CODES | CONFLICT_CODES):
                raise
            if not self._already_stored(message, key):
                # A different object under a content-addressed name is damage: replace it
                # (on a versioned bucket the old version is kept for inspection).
                self._put_checked(key, data, checksum, options)

    def _already_stored(self, message: SpooledMessage, key: str) -> bool:
        """Same size and the checksum we would send (or, for a multipart object
        whose checksum is a composite, the SHA-256 we recorded after checking it)."""
        try:
            head = self.client.head_object(Bucket=self.settings.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as error:
            if is_code(error, NOT_FOUND_CODES):
                return False
            raise
        if int(head.get("ContentLength", -1)) != message.size:
            return False
        reported = head.get("ChecksumSHA256")
        if not reported:
            return False
        if strip_part_count(reported) == sha256_base64(message.sha256):
            return True
        return bool(head.get("Metadata", {}).get("sha256") == message.sha256)

    def _check_spool_copy(self, message: SpooledMessage, actual: str) -> None:
        if actual != message.sha256:
            raise IntegrityError(
                f"sink {self.name!r}: the spool copy of {message.id} hashes to {actual}, but it was "
                f"received as {message.sha256}; the spool's disk is damaging data. Nothing was "
                "uploaded; the message is kept, retried, then quarantined: check the disk"
            )

    # --- large messages -----------------------------------------------------------

    async def _store_large(self, message: SpooledMessage, key: str) -> None:
        if await self._run("HeadObject", key, self._already_stored, message, key):
            return
        parts = plan_parts(message.size, self.settings.multipart_part_size, MAX_PARTS)
        digests = await self._run("UploadPart", key, self._hash_parts, message, parts)
        upload_id = await self._run("CreateMultipartUpload", key, self._create_upload, message, key)
        try:
            etags: list[str] = [""] * len(parts)

            async def send(part: Part) -> None:
                etags[part.number - 1] = await self._run(
                    "UploadPart", key, self._upload_part, message, key, upload_id, part, digests[part.number - 1]
                )

            async with anyio.create_task_group() as group:
                for part in parts:
                    group.start_soon(send, part)
            await self._run("CompleteMultipartUpload", key, self._complete_upload, key, upload_id, etags, digests)
        except BaseException:
            with anyio.move_on_after(ABORT_UPLOAD_SECONDS, shield=True):
                await anyio.to_thread.run_sync(self._abort_upload, key, upload_id, abandon_on_cancel=True)
            raise

    def _hash_parts(self, message: SpooledMessage, parts: list[Part]) -> list[bytes]:
        """One sequential read: every part's digest, and the whole file's, which
        must match the spool's SHA-256 before a byte is sent."""
        whole = hashlib.sha256()
        digests = []
        with open(message.path, "rb") as handle:
            for part in parts:
                digest = hashlib.sha256()
                remaining = part.length
                while remaining:
                    chunk = handle.read(min(CHUNK_SIZE, remaining))
                    if not chunk:
                        raise IntegrityError(
                            f"sink {self.name!r}: the spool copy of {message.id} is shorter than "
                            f"its recorded size {message.size}; check the spool's disk"
                        )
                    digest.update(chunk)
                    whole.update(chunk)
                    remaining -= len(chunk)
                digests.append(digest.digest())
        self._check_spool_copy(message, whole.hexdigest())
        return digests

    def _create_upload(self, message: SpooledMessage, key: str) -> str:
        options = self.object_options("message/rfc822")
        options["Metadata"] = _object_metadata(message)
        response = self.client.create_multipart_upload(
            Bucket=self.settings.bucket, Key=key, ChecksumAlgorithm="SHA256", **options
        )
        return str(response["UploadId"])

    def _upload_part(self, message: SpooledMessage, key: str, upload_id: str, part: Part, digest: bytes) -> str:
        checksum = sha256_base64(digest.hex())
        with FileSlice(message.path, part.offset, part.length) as body:
            response = self.client.upload_part(
                Bucket=self.settings.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part.number,
                Body=body,
                ContentLength=part.length,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
            )
        self._confirm(response.get("ChecksumSHA256"), checksum, f"{key} part {part.number}")
        return str(response["ETag"])

    def _complete_upload(self, key: str, upload_id: str, etags: list[str], digests: list[bytes]) -> None:
        parts = [
            {"PartNumber": number, "ETag": etag, "ChecksumSHA256": sha256_base64(digest.hex())}
            for number, (etag, digest) in enumerate(zip(etags, digests), start=1)
        ]
        response = self.client.complete_multipart_upload(
            Bucket=self.settings.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        expected = composite_checksum(digests)
        reported = response.get("ChecksumSHA256")
        if not reported:  # some stores (moto among them) report it only on HEAD
            head = self.client.head_object(Bucket=self.settings.bucket, Key=key, ChecksumMode="ENABLED")
            reported = head.get("ChecksumSHA256")
        self._confirm(reported, expected, key)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Best effort: a store that is down now keeps the parts until its
        lifecycle rule (AbortIncompleteMultipartUpload) removes them."""
        try:
            self.client.abort_multipart_upload(Bucket=self.settings.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            pass

    # --- metadata JSON -------------------------------------------------------------

    def _put_metadata(self, message: SpooledMessage, key: str) -> None:
        options = self.object_options("application/json")
        conditional = self.settings.conditional_writes
        if conditional:
            fresh = merge_metadata({}, message.metadata)
            try:
                self._put_json(key, fresh, options, IfNoneMatch="*")
                return
            except ClientError as error:
                if not is_code(error, PRECONDITION_CODES | CONFLICT_CODES):
                    raise
        for _ in range(METADATA_MERGE_ATTEMPTS):
            existing, etag = self._get_json(key)
            merged = merge_metadata(existing, message.metadata)
            if existing and merged == existing:
                return
            condition: dict[str, str] = {}
            if conditional:
                condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._put_json(key, merged, options, **condition)
                return
            except ClientError as error:
                if not (conditional and is_code(error, PRECONDITION_CODES | CONFLICT_CODES)):
                    raise
        raise S3SinkError(
            f"sink {self.name!r}: the metadata object s3://{self.settings.bucket}/{key} kept changing "
            f"while mailpipe merged an arrival into it ({METADATA_MERGE_ATTEMPTS} attempts); "
            "is another writer updating it? The delivery will be retried"
        )

    def _put_json(self, key: str, metadata: dict[str, Any], options: dict[str, Any], **condition: str) -> None:
        payload = json.dumps(metadata, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
        checksum = sha256_base64(hashlib.sha256(payload).hexdigest())
        self._put_checked(key, payload, checksum, options, **condition)

    def _get_json(self, key: str) -> tuple[dict[str, Any], str | None]:
        try:
            response = self.client.get_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as error:
            if is_code(error, NOT_FOUND_CODES):
                return {}, None
            raise
        with response["Body"] as body:
            data = body.read()
        try:
            existing = json.loads(data)
        except ValueError:
            existing = {}  # unreadable metadata is rewritten from the spool's facts
        return (existing if isinstance(existing, dict) else {}), response.get("ETag")

    # --- checking and closing -------------------------------------------------------

    async def test(self) -> TestResult:
        from mailpipe.sinks.s3_check import probe

        return await anyio.to_thread.run_sync(probe, self, abandon_on_cancel=True)

    async def aclose(self) -> None:
        with self._session_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _object_metadata(message: SpooledMessage) -> dict[str, str]:
    """Small, fixed user metadata (S3 allows 2 KB in all): enough to identify
    the message without fetching its JSON. The facts live in the JSON."""
    return {
        "sha256": message.sha256,
        "connection-id": safe_segment(str(message.metadata.get("connection_id") or "unknown")),
        "received-at": str(message.metadata.get("received_at") or ""),
    }


@hookimpl
def mailpipe_sink_types() -> list[SinkType]:
    return [
        SinkType(
            name="s3",
            description="Raw messages and metadata JSON in Amazon S3 or any S3-compatible store",
            factory=S3Sink,
            settings=SETTINGS,
        )
    ]
