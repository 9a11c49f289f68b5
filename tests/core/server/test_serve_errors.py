"""`mailpipe serve` refuses to start with a sentence, not a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.support.helpers import MAILPIPE, ServerProcess, smtp_port_of


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MAILPIPE, "serve", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_port_in_use(config_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", smtp_port_of(config_path)))
        squatter.listen()
        result = serve(config_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "address already in use" in result.stderr and "change [smtp] listen" in result.stderr


def test_unknown_sink_type(config_path: Path) -> None:
    config_path.write_text(config_path.read_text().replace('type = "filesystem"', 'type = "tape"'))
    result = serve(config_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown sink type 'tape'" in result.stderr


def test_bad_toml(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[smtp\nlisten = 1")
    result = serve(config)
    assert result.returncode == 1 and "not valid TOML" in result.stderr


def test_unknown_pipeline_cpu_priority(config_path: Path) -> None:
    config_path.write_text(config_path.read_text().replace("[pipeline]\n", '[pipeline]\ncpu_priority = "low"\n'))
    result = serve(config_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cpu_priority must be 'auto'" in result.stderr


def test_a_wide_proxy_protocol_range_is_logged_as_a_warning_at_start(config_path: Path) -> None:
    """Not an error (the server runs), but the operator reads why it is risky."""
    config_path.write_text(config_path.read_text().replace("[smtp]\n", '[smtp]\nproxy_protocol_from = ["0.0.0.0/0"]\n'))
    with ServerProcess(config_path) as server:
        entry = server.wait_for_log("proxy_protocol_from trusts 0.0.0.0/0")
    assert entry["level"] == "warning" and "allowed_senders" in entry["msg"]
