"""Turn boto3's exceptions into sentences an operator can act on.

The same wording serves the delivery log ("sink failed; will retry") and
``mailpipe sinks test``. No message ever contains a credential: only the
*kind* of credential source boto3 used (``env``, ``shared-credentials-file``,
``iam-role``...), which is what one needs to know to fix a permission.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError as BotocoreConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from mailpipe.errors import MailpipeError, MessageRejected, SinkUnavailable

PRECONDITION_CODES = {"PreconditionFailed", "412"}
CONFLICT_CODES = {"ConditionalRequestConflict", "409"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}

CREDENTIALS_HINT = (
    "give the server credentials through boto3's standard chain: AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY in its environment, AWS_PROFILE or `profile = \"...\"`, "
    "or an instance/task role"
)


class S3SinkError(MailpipeError):
    """A delivery to S3 failed; the message stays in the spool and is retried."""


class IntegrityError(S3SinkError):
    """The bytes read or stored do not match the spool's SHA-256."""


class S3Unavailable(S3SinkError, SinkUnavailable):
    """The store is down, slow, throttling or refusing our configuration: an
    outage for the pipeline, never a reason to quarantine mail."""


class S3Rejected(S3SinkError, MessageRejected):
    """The store refuses this message's request itself (a 4xx about it)."""


#: Answers that mean "not now" or "not with this configuration": the
#: operator (or time) fixes them, not the message.
UNAVAILABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError",
    "AccessDenied", "AllAccessDisabled", "Forbidden", "NoSuchBucket", "PermanentRedirect",
    "AuthorizationHeaderMalformed", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AccountProblem", "NotImplemented", "InvalidBucketState",
    "KMS.NotFoundException", "KMS.DisabledException", "KMSNotFound", "KMS.KMSInvalidStateException",
}
UNAVAILABLE_STATUSES = {301, 307, 401, 403, 408, 429}


def failure_class(error: BaseException) -> type[S3SinkError]:
    """Which side of the sink contract a boto3 error is on (mailpipe.errors)."""
    if isinstance(error, (BotocoreConnectionError, HTTPClientError, NoCredentialsError, PartialCredentialsError)):
        return S3Unavailable  # connection refused or cut, timeouts, no credentials
    if isinstance(error, ParamValidationError):
        return S3Rejected  # botocore refused to build the request for this message
    if isinstance(error, ClientError):
        code, status = error_code(error), http_status(error)
        if code in UNAVAILABLE_CODES or "KMS" in code or status >= 500 or status in UNAVAILABLE_STATUSES:
            return S3Unavailable
        if code == "InvalidRequest" and "ObjectLock" in str(error):
            return S3Unavailable  # the bucket lacks Object Lock: configuration
        if 400 <= status < 500:
            return S3Rejected  # InvalidArgument, EntityTooLarge, KeyTooLongError, ...
    return S3SinkError  # unclassified: counts toward max_attempts


@dataclass(frozen=True)
class Where:
    """What an error message names: the store, the bucket and the credential source."""

    endpoint: str
    bucket: str
    credential_source: str = "unknown"


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_code(error: BaseException, codes: set[str]) -> bool:
    return isinstance(error, ClientError) and (
        error_code(error) in codes or str(http_status(error)) in codes
    )


def explain(error: BaseException, action: str, where: Where, key: str = "") -> str:
    """One sentence: what failed, where, and what to do."""
    target = f"s3://{where.bucket}/{key}" if key else f"bucket {where.bucket!r}"
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return f"no usable AWS credentials for {action} on {target}: {CREDENTIALS_HINT}"
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
        return (
            f"cannot reach the S3 endpoint {where.endpoint} ({action} on {target}): {error}; "
            "check endpoint_url and region, that the store is running, and the network"
        )
    if isinstance(error, ReadTimeoutError):
        return (
            f"the S3 endpoint {where.endpoint} did not answer in time ({action} on {target}); "
            "the store is overloaded or the link is slow: raise read_timeout or lower max_concurrency"
        )
    if isinstance(error, ClientError):
        return _explain_client_error(error, action, target, where)
    if isinstance(error, BotoCoreError):
        return f"{action} on {target} failed: {error}"
    return f"{action} on {target} failed: {type(error).__name__}: {error}"


def _explain_client_error(error: ClientError, action: str, target: str, where: Where) -> str:
    code, status = error_code(error), http_status(error)
    detail = error.response.get("Error", {}).get("Message") or code or f"HTTP {status}"
    if code == "NoSuchBucket" or (status == 404 and action in ("HeadBucket", "the bucket check")):
        return (
            f"bucket {where.bucket!r} does not exist at {where.endpoint}; create it "
            "(with Object Lock enabled if you set object_lock_mode or legal_hold) or correct `bucket`"
        )
    if code in ("AccessDenied", "AllAccessDisabled") or status == 403 and code in ("", "403", "Forbidden"):
        return (
            f"access denied: {action} on {target} at {where.endpoint} was refused for the "
            f"credentials boto3 found (source: {where.credential_source}); grant them "
            f"{_permission_for(action)} on arn:aws:s3:::{where.bucket}"
            + ("/*" if action not in ("HeadBucket", "the bucket check") else "")
            + ", or use other credentials"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return (
            f"the store at {where.endpoint} rejected the credentials boto3 found "
            f"(source: {where.credential_source}): {detail}; {CREDENTIALS_HINT}"
        )
    if code == "InvalidRequest" and "ObjectLock" in detail:
        return (
            f"bucket {where.bucket!r} does not have Object Lock enabled ({detail}); create the "
            "bucket with Object Lock, or remove object_lock_mode/legal_hold from the sink"
        )
    if code in ("KMS.NotFoundException", "KMS.DisabledException", "KMSNotFound") or "KMS" in code:
        return f"{action} on {target}: the KMS key was refused ({detail}); check kms_key_id and its key policy"
    if code == "NotImplemented" or status == 501:
        return (
            f"the store at {where.endpoint} does not implement part of {action} ({detail}); "
            "if it rejects conditional writes set conditional_writes = false, if it rejects "
            'checksums set checksum_mode = "when_required"'
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
        region = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        hint = f'set region = "{region}"' if region else "set `region` to the bucket's region"
        return f"bucket {where.bucket!r} is in another region ({detail}); {hint}"
    if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded") or status >= 500:
        return (
            f"the store at {where.endpoint} is busy or failing ({action} on {target}: "
            f"{code or 'HTTP'} {status}); the message stays in the spool and is retried"
        )
    return f"{action} on {target} was refused by {where.endpoint}: {code} {detail}".rstrip()


def _permission_for(action: str) -> str:
    return {
        "HeadBucket": "s3:ListBucket",
        "the bucket check": "s3:ListBucket",
        "PutObject": "s3:PutObject",
        "the write probe": "s3:PutObject",
        "HeadObject": "s3:GetObject",
        "GetObject": "s3:GetObject",
        "CreateMultipartUpload": "s3:PutObject",
        "UploadPart": "s3:PutObject",
        "CompleteMultipartUpload": "s3:PutObject",
        "DeleteObject": "s3:DeleteObject",
        "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    }.get(action, f"the permission for {action}")
