"""Skip or fail when a real peer (Dovecot, an S3 API server) is unavailable.

Why not always skip: on a developer machine a missing Dovecot should not make
the suite red, but in CI a silently skipped peer test is a test that never
runs.  CI sets ``MAILPIPE_REQUIRE_PEERS=1`` so that a missing peer is a
failure there.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_PEERS_ENV = "MAILPIPE_REQUIRE_PEERS"


def peers_required() -> bool:
    """True when the environment demands real peers (CI)."""
    return os.environ.get(REQUIRE_PEERS_ENV, "").strip() == "1"


def peer_missing(reason: str) -> NoReturn:
    """Fail (CI, ``MAILPIPE_REQUIRE_PEERS=1``) or skip (elsewhere) with *reason*."""
    if peers_required():
        pytest.fail(f"{reason} ({REQUIRE_PEERS_ENV}=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)
