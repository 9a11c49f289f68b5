"""What the SMTP benchmarks share: free ports, process trees' peak memory,
waiting for a server's banner, and a `mailpipe serve` to measure.

Not a benchmark itself (`make bench` runs only ``bench_*.py``); the scripts
import it from their own directory. It makes ``tests.support`` importable.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MAILPIPE = [sys.executable, "-m", "mailpipe.cli.main"]
ROOT = Path(__file__).resolve().parent.parent
# The benchmarks use the tests' one support package (real peers, a `mailpipe
# serve` process) as a package, ``tests.support``, from the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (children of children too)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            pending += [int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return tree


def peak_rss_mib(pids: list[int]) -> float:
    """Sum of VmHWM (each process's peak resident set) over the given processes, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total_kib / 1024


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the given processes have used so far, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def wait_for_banner(port: int, process: subprocess.Popen, name: str, log: Path | None, timeout: float = 120) -> None:
    """Until the server on ``port`` greets with 220; a clear exit if it dies or never does.

    The bound is generous: on a loaded machine node or Python start slowly.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{name} exited with code {process.returncode} before listening\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                if probe.recv(100).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not greet on 127.0.0.1:{port} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen | None, timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class Mailpipe:
    """`mailpipe serve` with one enabled smtp_o365 connection and the filesystem sink.

    Every 250 it gives means the message was fsynced into the spool; the
    pipeline then stores it under ``archive/``.
    """

    def __init__(self, root: Path, workers: int = 1, pipeline_concurrency: int = 1, console: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.workers = workers
        self.config = root / "mailpipe.toml"
        # The console is on in the product's default; here on a free port ("": off).
        http_listen = f"127.0.0.1:{free_port()}" if console else ""
        self.config.write_text(
            '[server]\ndata_dir = "data"\nlog_level = "WARNING"\n\n'
            f'[smtp]\nlisten = "127.0.0.1:{self.port}"\njournal_domain = "journal.bench"\n\n'
            f"[pipeline]\nconcurrency = {pipeline_concurrency}\n\n"
            f'[http]\nlisten = "{http_listen}"\n\n'
            '[[sinks]]\ntype = "filesystem"\npath = "archive"\n'
        )
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def cli(self, *args: str) -> dict:
        done = subprocess.run(
            [*MAILPIPE, *args, "--json", "--config", str(self.config)], capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mailpipe {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def start(self) -> None:
        """Add and enable the connection, then start the server and wait for its banner."""
        added = self.cli(
            "connections", "add", "smtp_o365", "--description", "benchmark",
            "--set", "undeliverable_journal_address=undeliverable@contoso.com",
        )
        self.cli("connections", "enable", added["id"])
        self.address = added["address"]
        log = self.root / "serve.log"
        self.process = subprocess.Popen(
            [*MAILPIPE, "serve", "--config", str(self.config), "--workers", str(self.workers)],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True,
        )
        wait_for_banner(self.port, self.process, "mailpipe serve", log)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def archived(self) -> int:
        return sum(1 for _ in (self.root / "archive").glob("*/??/*.eml"))

    def wait_archived(self, count: int, timeout: float = 600) -> int:
        """Polls until ``count`` messages are in the sink (or the bound passes); returns how many are.

        The archive is counted only once the spool's queue is empty: a
        listing of one directory is cheap, a walk over tens of thousands of
        archived files is not, and this harness shares the CPUs it measures.
        """
        queue = self.root / "data" / "spool" / "queue"
        deadline = time.monotonic() + timeout
        while True:
            if not (queue.is_dir() and any(os.scandir(queue))):
                archived = self.archived()
                if archived >= count:
                    return archived
            if time.monotonic() > deadline:
                return self.archived()
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
