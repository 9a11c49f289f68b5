"""The s3 sink's settings: mistakes stop the server at start, credentials are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import cli, write_config
from mailpipe.sinks.s3 import S3Sink, mailpipe_sink_types
from mailpipe.sinks.s3_layout import composite_checksum, keys_for, plan_parts, sha256_base64
from mailpipe.sinks.s3_settings import MIB, parse_settings
from mailpipe.spool.queue import SpooledMessage
from mailpipe.types import SinkContext

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_defaults_and_normalised_prefix() -> None:
    settings = parse_settings("s3", {"bucket": "mail-archive", "prefix": "/journal/"})
    assert settings.prefix == "journal/"
    assert settings.checksum_mode == "when_supported"
    assert settings.multipart_threshold == 8 * MIB
    assert settings.conditional_writes is True
    assert parse_settings("s3", {"bucket": "b-b-b", "multipart_threshold": "16 MiB"}).multipart_threshold == 16 * MIB


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, 'needs bucket = "..."'),
        ({"bucket": "b-b-b", "sse": "aes"}, "sse 'aes' is not one of 'AES256', 'aws:kms'"),
        ({"bucket": "b-b-b", "kms_key_id": "k"}, 'kms_key_id needs sse = "aws:kms"'),
        ({"bucket": "b-b-b", "object_lock_mode": "COMPLIANCE"}, "object_lock_mode needs object_lock_days"),
        ({"bucket": "b-b-b", "object_lock_days": 3}, "object_lock_days needs object_lock_mode"),
        ({"bucket": "b-b-b", "checksum_mode": "never"}, "checksum_mode 'never' is not one of"),
        ({"bucket": "b-b-b", "multipart_part_size": 1024}, "at least 5 MiB"),
        ({"bucket": "b-b-b", "legal_hold": "yes"}, "legal_hold must be true or false"),
        ({"bucket": "b-b-b", "max_concurrency": 0}, "max_concurrency must be a positive whole number"),
        ({"bucket": "b-b-b", "bukket": "x"}, "unknown key(s) bukket; known keys are"),
        ({"bucket": "b-b-b", "multipart_threshold": "6 GiB"}, "S3 refuses single uploads that large"),
        ({"bucket": "b-b-b", "endpoint_url": "https://minio:s3cr3t-pw@store:9000"},
         "endpoint_url must not contain a user or password"),
    ],
)
def test_mistakes_are_named(table: dict, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_settings("s3", table)
    assert expected in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize("key", ["access_key", "secret_key", "aws_secret_access_key", "session_token"])
def test_credentials_in_the_config_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ValueError) as caught:
        S3Sink("s3", {"bucket": "b-b-b", key: SECRET}, SinkContext("/tmp", "/tmp"))
    message = str(caught.value)
    assert f"credentials do not belong in the config file (found {key})" in message
    assert "AWS_ACCESS_KEY_ID" in message and "instance/task role" in message
    assert SECRET not in message


def test_serve_refuses_credentials_in_the_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        sinks=f'[[sinks]]\ntype = "s3"\nbucket = "b-b-b"\nsecret_key = "{SECRET}"\naccess_key = "AKIAEXAMPLE"\n',
    )
    result = cli(config, "sinks", "test")
    assert result.code == 1
    assert "credentials do not belong in the config file (found access_key, secret_key)" in result.err
    assert SECRET not in result.err + result.out and "AKIAEXAMPLE" not in result.err + result.out


def test_sink_type_registers_with_its_settings_schema() -> None:
    (sink_type,) = mailpipe_sink_types()
    assert sink_type.name == "s3" and sink_type.factory is S3Sink
    names = {setting.name for setting in sink_type.settings}
    assert {"bucket", "prefix", "region", "endpoint_url", "checksum_mode", "sse", "kms_key_id",
            "object_lock_mode", "object_lock_days", "legal_hold", "storage_class",
            "multipart_threshold", "max_concurrency"} <= names


def test_key_layout_is_prefix_connection_day_hash() -> None:
    sha = "ab" * 32
    message = SpooledMessage(
        "id1", Path("/nonexistent"),
        {"connection_id": "c/../1", "received_at": "2024-02-29T23:59:59.5-02:00", "sha256": sha, "size": 1},
    )
    keys = keys_for("mail/", message)
    # 23:59 at UTC-2 is the next UTC day; the connection id cannot climb out of its folder
    assert keys.eml == f"mail/c_.._1/2024/03/01/{sha}.eml"
    assert keys.json == f"mail/c_.._1/2024/03/01/{sha}.json"


def test_checksum_spellings() -> None:
    import base64
    import hashlib

    assert sha256_base64(hashlib.sha256(b"x").hexdigest()) == base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    digests = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
    expected = base64.b64encode(hashlib.sha256(digests[0] + digests[1]).digest()).decode()
    assert composite_checksum(digests) == f"{expected}-2"


def test_parts_cover_the_message_within_the_part_limit() -> None:
    parts = plan_parts(20 * 1000 * 1000, 8 * MIB)
    assert [p.number for p in parts] == [1, 2, 3]
    assert sum(p.length for p in parts) == 20 * 1000 * 1000
    assert parts[1].offset == 8 * MIB
    many = plan_parts(100 * 1024 * MIB, 5 * MIB, max_parts=10_000)
    assert len(many) <= 10_000 and sum(p.length for p in many) == 100 * 1024 * MIB
