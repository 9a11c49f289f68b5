"""`mailpipe sinks list` and `mailpipe sinks test` against a real S3 API over HTTP.

Access denied comes from moto's own IAM enforcement (a user whose policy
allows reading the bucket but not writing to it), on a private moto server:
switching IAM on is server-wide, so the shared one stays untouched.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import cli, free_port, write_config
from tests.support.peers.require import peer_missing
from tests.support.peers.s3 import MotoError, MotoS3

pytestmark = pytest.mark.peer

BUCKET = "mail-archive"


def s3_table(endpoint: str, bucket: str = BUCKET, name: str = "archive-s3", **extra: Any) -> str:
    lines = ["[[sinks]]", 'type = "s3"', f'name = "{name}"', f'bucket = "{bucket}"', f'endpoint_url = "{endpoint}"',
             "max_attempts = 1"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


FILESYSTEM = '[[sinks]]\ntype = "filesystem"\nname = "local"\npath = "archive"\n'


def test_sinks_list_shows_every_sink_and_whether_it_is_required(tmp_path: Path) -> None:
    config = write_config(tmp_path, sinks=FILESYSTEM + s3_table("http://127.0.0.1:9", required=False))
    rows = cli(config, "sinks", "list", check=True).json["sinks"]
    assert rows == [
        {"name": "local", "type": "filesystem", "required": True},
        {"name": "archive-s3", "type": "s3", "required": False},
    ]


def test_sinks_test_ok(moto_s3: Any, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    config = write_config(tmp_path, sinks=FILESYSTEM + s3_table(moto_s3.endpoint_url, prefix="mail/"))
    result = cli(config, "sinks", "test")
    assert result.code == 0, result
    assert [(row["name"], row["ok"]) for row in result.json["sinks"]] == [("local", True), ("archive-s3", True)]
    assert moto_s3.client().list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # the probe was removed


def test_sinks_test_no_such_bucket(moto_s3: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sinks=s3_table(moto_s3.endpoint_url, bucket="no-such-bucket"))
    result = cli(config, "sinks", "test", "archive-s3")
    assert result.code == 1
    row = result.json
    assert row["ok"] is False
    assert row["error"].startswith(f"bucket 'no-such-bucket' does not exist at {moto_s3.endpoint_url}; create it")


def test_sinks_test_unreachable_endpoint(aws_credentials: dict[str, str], tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, sinks=s3_table(endpoint))
    result = cli(config, "sinks", "test")
    assert result.code == 1
    (row,) = result.json["sinks"]
    assert row["error"].startswith(f"cannot reach the S3 endpoint {endpoint}")
    assert "check endpoint_url and region, that the store is running, and the network" in row["error"]


def test_sinks_test_object_lock_missing(moto_s3: Any, tmp_path: Path) -> None:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    config = write_config(tmp_path, sinks=s3_table(moto_s3.endpoint_url, object_lock_mode="GOVERNANCE",
                                                   object_lock_days=7))
    (row,) = cli(config, "sinks", "test").json["sinks"]
    assert not row["ok"] and "Object Lock is not enabled on bucket 'mail-archive'" in row["error"]


def test_sinks_test_without_credentials(
    moto_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_s3.client().create_bucket(Bucket=BUCKET)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # no instance metadata service here: make boto3 give up on it at once
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = write_config(tmp_path, sinks=s3_table(moto_s3.endpoint_url))
    (row,) = cli(config, "sinks", "test").json["sinks"]
    assert row["error"].startswith("no AWS credentials found: give the server credentials through boto3's")


def test_sinks_test_unknown_name(tmp_path: Path) -> None:
    config = write_config(tmp_path, sinks=FILESYSTEM)
    result = cli(config, "sinks", "test", "nope")
    assert result.code == 1
    assert "no sink named 'nope'; configured sinks: local" in result.err


# --- access denied, from moto's IAM enforcement ------------------------------------------


@pytest.fixture
def iam_moto(aws_credentials: dict[str, str]) -> Iterator[MotoS3]:
    """A moto server of this test's own: IAM enforcement is server-wide."""
    with contextlib.closing(MotoS3()) as server:
        try:
            server.start()
        except MotoError as error:
            peer_missing(f"moto server did not start: {error}")
        yield server


def reader_credentials(server: MotoS3, bucket: str) -> dict[str, str]:
    """A user allowed to look at ``bucket`` but not to write to it; then IAM is switched on."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=server.endpoint_url, region_name=server.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    iam.create_user(UserName="reader")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            # moto names the HEAD-bucket action s3:HeadBucket; AWS checks s3:ListBucket
            "Action": ["s3:ListBucket", "s3:HeadBucket", "s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }, {
            "Effect": "Allow",  # a drop box: writing allowed, deleting not
            "Action": ["s3:ListBucket", "s3:HeadBucket", "s3:PutObject"],
            "Resource": ["arn:aws:s3:::drop-box", "arn:aws:s3:::drop-box/*"],
        }],
    }
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    # From now on moto authenticates every request and evaluates IAM policies.
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def test_sinks_test_access_denied(iam_moto: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iam_moto.client().create_bucket(Bucket=BUCKET)
    iam_moto.client().create_bucket(Bucket="someone-elses")
    iam_moto.client().create_bucket(Bucket="drop-box")
    credentials = reader_credentials(iam_moto, BUCKET)
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = write_config(
        tmp_path,
        sinks=s3_table(iam_moto.endpoint_url, prefix="mail/")
        + s3_table(iam_moto.endpoint_url, "someone-elses", "other")
        + s3_table(iam_moto.endpoint_url, "drop-box", "drop"),
    )
    result = cli(config, "sinks", "test", env=credentials)
    assert result.code == 1
    write_denied, read_denied, drop_box = result.json["sinks"]
    assert drop_box["ok"] is True  # it can store mail; the leftover probe is only a warning
    (warning,) = drop_box["warnings"]
    assert warning.startswith("the probe object s3://drop-box/.mailpipe-sink-test/")
    assert "could not be deleted (access denied: DeleteObject" in warning and "remove it by hand" in warning
    assert write_denied["error"].startswith(
        f"access denied: the write probe on s3://{BUCKET}/mail/.mailpipe-sink-test/"
    )
    assert "for the credentials boto3 found (source: env); grant them s3:PutObject on arn:aws:s3:::mail-archive/*" in (
        write_denied["error"]
    )
    assert read_denied["error"].startswith("access denied: the bucket check on bucket 'someone-elses'")
    assert "grant them s3:ListBucket on arn:aws:s3:::someone-elses," in read_denied["error"]
    assert credentials["AWS_SECRET_ACCESS_KEY"] not in result.out + result.err
    assert credentials["AWS_ACCESS_KEY_ID"] not in result.out + result.err
