"""Which side of the sink contract each boto3 error lands on (issue 11, item 3).

The errors are built as botocore builds them from a store's answer; the
outage itself is tested against moto's server in test_s3_outage.py.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from mailpipe.errors import MessageRejected, SinkUnavailable
from mailpipe.sinks.s3_errors import failure_class


def answer(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        NoCredentialsError(),
        answer("SlowDown", 503),
        answer("InternalError", 500),
        answer("ServiceUnavailable", 503),
        answer("Throttling", 400),
        answer("AccessDenied", 403),
        answer("NoSuchBucket", 404),
        answer("InvalidAccessKeyId", 403),
        answer("RequestTimeout", 400),
    ],
    ids=lambda e: type(e).__name__ if not isinstance(e, ClientError) else e.response["Error"]["Code"],
)
def test_outages_and_operator_fixes_are_unavailable(error: Exception) -> None:
    assert issubclass(failure_class(error), SinkUnavailable)


@pytest.mark.parametrize(
    "error",
    [answer("InvalidArgument", 400), answer("EntityTooLarge", 400), answer("KeyTooLongError", 400),
     ParamValidationError(report="bad")],
    ids=["InvalidArgument", "EntityTooLarge", "KeyTooLongError", "ParamValidationError"],
)
def test_refusals_of_the_message_are_rejections(error: Exception) -> None:
    assert issubclass(failure_class(error), MessageRejected)
