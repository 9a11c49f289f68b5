"""``mailpipe sinks test`` for the s3 sink: can this sink store mail right now?

Checked in the order an operator fixes things: credentials present, the
endpoint answers, the bucket exists and is visible, Object Lock is on when
the sink asks for it, and a probe object can be written (with the same
encryption and storage class as real mail, so a refused KMS key shows up
here and not at 3 a.m.) and deleted again.

Runs in a worker thread with its own short-fused client: a test must answer
in seconds, not after the delivery client's patient retries.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from mailpipe.sinks.s3_errors import (
    CREDENTIALS_HINT,
    PRECONDITION_CODES,
    error_code,
    explain,
    is_code,
)
from mailpipe.sinks.s3_layout import sha256_base64
from mailpipe.types import TestResult

if TYPE_CHECKING:
    from mailpipe.sinks.s3 import S3Sink

PROBE_ATTEMPTS = 2
PROBE_TIMEOUTS = (5, 15)
PROBE_BODY = b"mailpipe sink test: this object is written and deleted by `mailpipe sinks test`\r\n"


def probe(sink: "S3Sink") -> TestResult:
    settings = sink.settings
    where = sink.where()
    details: dict[str, Any] = {
        "bucket": settings.bucket,
        "prefix": settings.prefix,
        "endpoint": where.endpoint,
        "credentials": where.credential_source,
    }
    try:
        credentials = sink.session.get_credentials()
    except BotoCoreError as error:  # e.g. profile = "..." names no profile
        return TestResult(ok=False, error=f"boto3 could not load credentials: {error}; {CREDENTIALS_HINT}",
                          details=details)
    if credentials is None:
        return TestResult(ok=False, error=f"no AWS credentials found: {CREDENTIALS_HINT}", details=details)
    client = sink.make_client(PROBE_ATTEMPTS, PROBE_TIMEOUTS)
    warnings: list[str] = []
    try:
        try:
            client.head_bucket(Bucket=settings.bucket)
        except (ClientError, BotoCoreError) as error:
            return TestResult(ok=False, error=explain(error, "the bucket check", where), details=details)

        if settings.wants_object_lock:
            problem = _object_lock_problem(client, sink, warnings)
            if problem:
                return TestResult(ok=False, error=problem, details=details)
            details["object_lock"] = "enabled"

        key = f"{settings.prefix}.mailpipe-sink-test/{secrets.token_hex(8)}"
        options = sink.object_options("text/plain")
        options.pop("ObjectLockMode", None)  # a locked probe could never be deleted
        options.pop("ObjectLockRetainUntilDate", None)
        options.pop("ObjectLockLegalHoldStatus", None)
        condition = {"IfNoneMatch": "*"} if settings.conditional_writes else {}
        try:
            client.put_object(
                Bucket=settings.bucket,
                Key=key,
                Body=PROBE_BODY,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=sha256_base64(hashlib.sha256(PROBE_BODY).hexdigest()),
                **options,
                **condition,
            )
        except (ClientError, BotoCoreError) as error:
            if is_code(error, PRECONDITION_CODES):  # a random name taken: the write path works
                pass
            else:
                return TestResult(ok=False, error=explain(error, "the write probe", where, key), details=details)
        try:
            client.delete_object(Bucket=settings.bucket, Key=key)
        except (ClientError, BotoCoreError) as error:
            warnings.append(
                f"the probe object s3://{settings.bucket}/{key} could not be deleted "
                f"({explain(error, 'DeleteObject', where, key)}); remove it by hand"
            )
    finally:
        client.close()
    return TestResult(ok=True, warnings=tuple(warnings), details=details)


def _object_lock_problem(client: Any, sink: "S3Sink", warnings: list[str]) -> str:
    settings = sink.settings
    try:
        answer = client.get_object_lock_configuration(Bucket=settings.bucket)
    except ClientError as error:
        if error_code(error) == "ObjectLockConfigurationNotFoundError":
            return _lock_missing(settings.bucket)
        if error_code(error) in ("AccessDenied", "403"):
            warnings.append(
                "could not check that Object Lock is enabled (grant "
                "s3:GetBucketObjectLockConfiguration to see it); uploads will fail if it is not"
            )
            return ""
        return explain(error, "GetObjectLockConfiguration", sink.where())
    except BotoCoreError as error:
        return explain(error, "GetObjectLockConfiguration", sink.where())
    if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        return _lock_missing(settings.bucket)
    return ""


def _lock_missing(bucket: str) -> str:
    return (
        f"Object Lock is not enabled on bucket {bucket!r}, but the sink sets object_lock_mode or "
        "legal_hold; use a bucket created with Object Lock enabled (or enable it on a versioned "
        "bucket), or remove those settings"
    )
