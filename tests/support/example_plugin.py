"""The example plugin package (examples/mailpipe-example), installed as an integrator would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "mailpipe-example"


@pytest.fixture(scope="session")
def example_installed() -> None:
    """pip-install the example package into this environment, as an integrator would."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(EXAMPLE)],
        check=True,
        capture_output=True,
    )
