"""How fast a connection change made by the CLI reaches a running server.

Starts `mailpipe serve`, then repeatedly disables and enables one smtp_o365
connection with the CLI and measures, from the moment the CLI command
returns, how long until the SMTP listener answers RCPT TO accordingly
(451 for disabled, 250 for enabled). The requirement is "within 1 s".
Baseline in the same run: how long the CLI command itself takes, so the
figure can be read against this machine's speed at the time.

    python benchmarks/bench_reload.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import ROOT  # noqa: F401  (first: it makes tests.support importable)
from tests.support.helpers import ServerProcess, cli, smtp_port_of, write_config


def rcpt_code(port: int, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("bench.test")
        client.mail("journal@customer.example")
        code, _ = client.rcpt(address)
        client.rset()
        return int(code)


def time_until(port: int, address: str, wanted: int) -> float:
    started = time.monotonic()
    while rcpt_code(port, address) != wanted:
        if time.monotonic() - started > 30:
            raise SystemExit(f"the server never answered {wanted} for {address}")
        time.sleep(0.01)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        config = write_config(Path(directory))
        port = smtp_port_of(config)
        added = cli(config, "connections", "add", "smtp_o365", "--description", "bench",
                    "--set", "undeliverable_journal_address=ndr@customer.example", check=True).json
        with ServerProcess(config):
            reload_times, cli_times = [], []
            for _ in range(args.rounds):
                for action, wanted in (("enable", 250), ("disable", 451)):
                    started = time.monotonic()
                    cli(config, "connections", action, added["id"], check=True)
                    cli_times.append(time.monotonic() - started)
                    reload_times.append(time_until(port, added["address"], wanted))
    print(f"hot reload: {len(reload_times)} changes")
    print(f"  change visible to SMTP after the CLI returned: median {statistics.median(reload_times) * 1000:.0f} ms,"
          f" max {max(reload_times) * 1000:.0f} ms (requirement: 1000 ms)")
    print(f"  baseline, one CLI command: median {statistics.median(cli_times) * 1000:.0f} ms")
    print(f"  ratio max-reload / requirement: {max(reload_times) / 1.0:.2f}")


if __name__ == "__main__":
    main()
