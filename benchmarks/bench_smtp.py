"""SMTP intake throughput and memory: `mailpipe serve` against a bare aiosmtpd.

Sends N messages of S bytes over C concurrent SMTP sessions (default 5,000 ×
4 KiB over 20 sessions) to

1. a bare aiosmtpd server whose handler discards every message (baseline:
   the cost of SMTP alone, nothing stored), and
2. `mailpipe serve` (subprocess, fresh data directory, filesystem sink) with
   one enabled smtp_o365 connection: every 250 there means the message was
   fsynced into the spool,

with the same client, in the same run: after a warm-up of each, ``--rounds``
timed rounds (default 3) alternate between the two, so that a slow spell
of the shared machine hits both. It prints each round, then the median
round's accepted messages/s for each and the median ratio, each server's
peak RSS (VmHWM; for mailpipe, the sum over its processes), and how fast
mailpipe's pipeline archived everything (each mailpipe round waits until
its messages are archived before the next round begins).

The client is Postfix's `smtp-source` (a light C program) when installed,
else a small asyncio client writing raw SMTP (so that the client is not the
bottleneck on two cores).

    python benchmarks/bench_smtp.py                     # 5000 x 4 KiB, 20 sessions
    python benchmarks/bench_smtp.py --workers 2         # mailpipe serve --workers 2
    python benchmarks/bench_smtp.py --client python -n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAILPIPE = [sys.executable, "-m", "mailpipe.cli"]
SENDER = "journal-sender@contoso.com"


# --- servers ------------------------------------------------------------------


BASELINE_SERVER = r"""
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"

async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Discard(), hostname="baseline", data_size_limit=150 * 1024 * 1024),
        "127.0.0.1", port, backlog=512)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def peak_rss_mib(pids: list[int]) -> float:
    """Sum of VmHWM (peak resident set) of the given processes, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total_kib / 1024


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def start_baseline(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", BASELINE_SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit("the baseline aiosmtpd server did not start")
    return process


class Mailpipe:
    def __init__(self, root: Path, port: int, workers: int, pipeline_concurrency: int, console: bool = True) -> None:
        self.root = root
        self.port = port
        self.workers = workers
        self.config = root / "mailpipe.toml"
        self.config.write_text(
            '[server]\ndata_dir = "data"\nlog_level = "WARNING"\n\n'
            f'[smtp]\nlisten = "127.0.0.1:{port}"\njournal_domain = "journal.bench"\n\n'
            f"[pipeline]\nconcurrency = {pipeline_concurrency}\n\n"
            '[[sinks]]\ntype = "filesystem"\npath = "archive"\n\n'
            # The console is on by default in the product; on a free port here (--no-console: off).
            f'[http]\nlisten = "{f"127.0.0.1:{free_port()}" if console else ""}"\n'
        )
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def cli(self, *args: str) -> dict:
        done = subprocess.run(
            [*MAILPIPE, *args, "--json", "--config", str(self.config)],
            capture_output=True, text=True, check=True,
        )
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def prepare(self) -> None:
        added = self.cli(
            "connections", "add", "smtp_o365", "--description", "benchmark",
            "--set", "undeliverable_journal_address=undeliverable@contoso.com",
        )
        self.cli("connections", "enable", added["id"])
        self.address = added["address"]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*MAILPIPE, "serve", "--config", str(self.config), "--workers", str(self.workers)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "serve.log", "w"), text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("mailpipe serve exited:\n" + (self.root / "serve.log").read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(100).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("mailpipe serve did not start listening within 60 s")

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid, *children_of(self.process.pid)]

    def archived(self) -> int:
        return sum(1 for _ in (self.root / "archive").glob("*/??/*.eml"))

    def wait_archived(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.archived() < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- clients --------------------------------------------------------------------


def run_smtp_source(port: int, messages: int, sessions: int, size: int, recipient: str) -> float:
    command = [
        "smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-d",
        "-f", SENDER, "-t", recipient, "-M", "bench.client", f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"smtp-source failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed


async def _python_session(port: int, count: int, first: int, size: int, recipient: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply(expect: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line:
                raise SystemExit("the server closed the connection")
            if line[3:4] != b"-":
                if not line.startswith(expect):
                    raise SystemExit(f"unexpected reply {line!r}")
                return

    await reply(b"220")
    writer.write(b"EHLO bench.client\r\n")
    await reply(b"250")
    line = b"X" * 78 + b"\r\n"
    body = line * max(1, size // len(line))
    for number in range(first, first + count):
        header = (
            f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: bench {number}\r\n"
            f"Message-ID: <bench-{number}@bench.client>\r\n\r\n"
        ).encode()
        writer.write(f"MAIL FROM:<{SENDER}>\r\n".encode())
        await reply(b"250")
        writer.write(f"RCPT TO:<{recipient}>\r\n".encode())
        await reply(b"250")
        writer.write(b"DATA\r\n")
        await reply(b"354")
        writer.write(header + body + b".\r\n")
        await reply(b"250")
    writer.write(b"QUIT\r\n")
    await reply(b"221")
    writer.close()


def run_python_client(port: int, messages: int, sessions: int, size: int, recipient: str) -> float:
    async def main() -> None:
        share, extra = divmod(messages, sessions)
        tasks, first = [], 0
        for index in range(sessions):
            count = share + (1 if index < extra else 0)
            tasks.append(_python_session(port, count, first, size, recipient))
            first += count
        await asyncio.gather(*tasks)

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


# --- the run ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=5000)
    parser.add_argument("-c", "--sessions", type=int, default=20)
    parser.add_argument("-s", "--size", type=int, default=4096, help="message payload bytes")
    parser.add_argument("--workers", type=int, default=1, help="mailpipe serve --workers")
    parser.add_argument(
        "--warmup", type=int, default=1000,
        help="messages sent to each server before the timed run (default 1000; mailpipe archives "
             "them before timing starts, so its spool has files to reuse, as in steady operation)",
    )
    parser.add_argument("--no-console", action="store_true",
                        help="run mailpipe with [http] listen = \"\" (compare with the console on)")
    parser.add_argument("--client", choices=("auto", "smtp-source", "python"), default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per server, alternating")
    parser.add_argument(
        "--pipeline-concurrency", type=int, default=1,
        help="[pipeline] concurrency of the mailpipe server (default 1, the product default)",
    )
    args = parser.parse_args()

    client_name = args.client
    if client_name == "auto":
        client_name = "smtp-source" if shutil.which("smtp-source") else "python"
    send = run_smtp_source if client_name == "smtp-source" else run_python_client
    print(
        f"bench_smtp: {args.messages} messages x {args.size} bytes over {args.sessions} sessions, "
        f"client {client_name}, warm-up {args.warmup}, {args.rounds} rounds, mailpipe workers {args.workers}, "
        f"pipeline concurrency {args.pipeline_concurrency}, {os.cpu_count()} CPUs"
    )

    baseline_port = free_port()
    baseline = start_baseline(baseline_port)
    rounds: list[tuple[float, float, float]] = []  # baseline s, mailpipe s, mailpipe archived s
    try:
        with tempfile.TemporaryDirectory(prefix="bench-smtp-") as temporary:
            mailpipe = Mailpipe(Path(temporary), free_port(), args.workers, args.pipeline_concurrency,
                                not args.no_console)
            mailpipe.prepare()
            mailpipe.start()
            try:
                if args.warmup:
                    send(baseline_port, args.warmup, args.sessions, args.size, "anyone@journal.bench")
                    send(mailpipe.port, args.warmup, args.sessions, args.size, mailpipe.address)
                    mailpipe.wait_archived(args.warmup)
                # Rounds alternate, so that a slow spell of the shared machine
                # hits both sides; the ratio reported is the median round's.
                for number in range(1, args.rounds + 1):
                    baseline_seconds = send(baseline_port, args.messages, args.sessions, args.size, "anyone@journal.bench")
                    before = mailpipe.archived()
                    started = time.perf_counter()
                    mailpipe_seconds = send(mailpipe.port, args.messages, args.sessions, args.size, mailpipe.address)
                    mailpipe.wait_archived(before + args.messages)
                    archived_seconds = time.perf_counter() - started
                    if mailpipe.archived() - before != args.messages:
                        raise SystemExit(f"round {number}: mailpipe archived {mailpipe.archived() - before} "
                                         f"of {args.messages} messages")
                    rounds.append((baseline_seconds, mailpipe_seconds, archived_seconds))
                    print(f"round {number}: baseline {args.messages / baseline_seconds:6.0f} msg/s, mailpipe "
                          f"{args.messages / mailpipe_seconds:6.0f} msg/s (ratio "
                          f"{baseline_seconds / mailpipe_seconds:.2f}x), all archived "
                          f"{args.messages / archived_seconds:6.0f} msg/s end to end", flush=True)
                mailpipe_rss = peak_rss_mib(mailpipe.pids())
            finally:
                mailpipe.stop()
        baseline_rss = peak_rss_mib([baseline.pid])
    finally:
        baseline.terminate()
        baseline.wait(30)

    ratios = sorted(b / m for b, m, _ in rounds)
    middle = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]
    baseline_rate, mailpipe_rate = args.messages / middle[0], args.messages / middle[1]
    print(f"median round ({len(rounds)} rounds):")
    print(f"baseline aiosmtpd (discards):   {baseline_rate:8.0f} msg/s  peak RSS {baseline_rss:.0f} MiB")
    print(f"mailpipe (250 after fsync):     {mailpipe_rate:8.0f} msg/s  peak RSS {mailpipe_rss:.0f} MiB "
          "(all processes)")
    print(f"ratio mailpipe / baseline:      {ratios[len(ratios) // 2]:8.2f}x  "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"archived by the pipeline:       {args.messages / middle[2]:8.0f} msg/s end to end "
          "(from the first message until all were in the sink)")


if __name__ == "__main__":
    main()
