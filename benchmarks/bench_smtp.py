"""SMTP intake throughput: mailpipe side by side with Haraka, aiosmtpd and smtp-sink.

Sends N messages of S bytes over C concurrent SMTP sessions (default 5,000 ×
4 KiB over 20 sessions), with the same client, to each peer of one run:

* ``mailpipe``: `mailpipe serve` (fresh data directory, filesystem sink, one
  enabled smtp_o365 connection), once per ``--workers`` value (default 1
  and 2, i.e. one SMTP process and `--workers 2`). Its 250 means the
  message was fsynced into the spool. Besides that acknowledged rate, the
  end-to-end *archived* rate: from the first message sent until the
  pipeline has stored every message of the round in the sink.
* ``haraka``: Haraka 3 from npm (benchmarks/haraka/install.sh), nodes=cpus,
  with benchmarks/haraka/plugins/fsync_queue.js: each message written to a
  file of its own and fsynced before the 250. Optional: skipped, with the
  reason printed, when it is not installed.
* ``aiosmtpd``: a bare aiosmtpd server whose handler discards every message
  (the cost of Python SMTP alone, nothing stored).
* ``smtp-sink``: Postfix's C test server, discards (the ceiling of this
  client and the loopback on this machine). Optional.

Both session modes (``--modes``): ``reused`` (each session sends its share
of the messages over one connection, `smtp-source -d`, as Office 365
journaling does) and ``per-message`` (one connection per message).

Each peer gets a warm-up (``--warmup`` messages per mode) first, then
``--rounds`` timed rounds (default 3). Within a round every mode measures
every peer once, one after the other, in an order that rotates from round
to round, so that a slow spell of the shared machine hits all of them.
Reported: each round, then per mode the median of the rounds for every
peer's rate, and the ratios the targets are stated in (each ratio is the
median of the per-round ratios) with the target and whether it is met.

The client is Postfix's `smtp-source` (a light C program) when installed,
else a small asyncio client writing raw SMTP.

    python benchmarks/bench_smtp.py                            # everything, 5000 x 4 KiB
    python benchmarks/bench_smtp.py -n 500 --rounds 3          # a quick check
    python benchmarks/bench_smtp.py --peers mailpipe,haraka --workers 2 --modes reused
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import ROOT, Mailpipe, cpu_seconds, free_port, peak_rss_mib, process_tree, stop_process, wait_for_banner

SENDER = "journal-sender@contoso.com"
ANY_RECIPIENT = "anyone@journal.bench"
MODES = {"reused": "sessions reused", "per-message": "one connection per message"}
PEER_NAMES = ("mailpipe", "haraka", "aiosmtpd", "smtp-sink")
HARAKA_DIR = Path(__file__).resolve().parent / "haraka"
# (numerator, denominator, target or None): the ratios issue 16 states its targets in.
TARGETS = (("mailpipe", "haraka", 1.5), ("mailpipe", "aiosmtpd", 1.0), ("archived", "haraka", 1.0),
           ("mailpipe", "smtp-sink", None))


# --- peers -------------------------------------------------------------------------


class PeerUnavailable(Exception):
    """An optional peer cannot run here; the message says why and how to fix it."""


@dataclass
class Peer:
    """One SMTP server under test. ``stored`` counts what it made durable (None: it discards)."""

    name: str
    label: str
    port: int = 0
    recipient: str = ANY_RECIPIENT
    process: subprocess.Popen | None = None
    rates: dict[str, list[float]] = field(default_factory=dict)  # mode -> msg/s per round
    #: mode -> the peer's CPU time (all its processes, user + system) per message, ms, per round
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    peak_rss: float = 0.0  # MiB, summed over the peer's processes

    def start(self) -> None:
        raise NotImplementedError

    def stored(self) -> int | None:
        return None

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def stop(self) -> None:
        stop_process(self.process)


AIOSMTPD_SERVER = r"""
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"

async def main(port):
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: SMTP(Discard(), hostname="baseline", data_size_limit=150 * 1024 * 1024),
        "127.0.0.1", port, backlog=512)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


class Aiosmtpd(Peer):
    def start(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, str(self.port)])
        wait_for_banner(self.port, self.process, "the aiosmtpd baseline", None)


class SmtpSink(Peer):
    def start(self) -> None:
        binary = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin:/usr/local/sbin")
        if not binary:
            raise PeerUnavailable("smtp-sink is not installed (Debian/Ubuntu: apt-get install postfix)")
        self.port = free_port()
        # smtp-sink insists on dropping root privileges to a named user.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen([binary, *user, f"127.0.0.1:{self.port}", "512"])
        wait_for_banner(self.port, self.process, "smtp-sink", None)


class Haraka(Peer):
    def __init__(self, name: str, label: str, prefix: Path, work: Path) -> None:
        super().__init__(name, label)
        self.binary = prefix / "node_modules" / ".bin" / "haraka"
        self.home = work / "haraka"

    def start(self) -> None:
        if not shutil.which("node"):
            raise PeerUnavailable("node is not installed (Haraka needs Node.js 20 or later)")
        if not self.binary.exists():
            raise PeerUnavailable(f"Haraka is not installed in {self.binary.parents[2]}: run "
                                  f"benchmarks/haraka/install.sh {self.binary.parents[2]} (needs npm)")
        # The operator's usual setup: `haraka -i` writes the default config
        # files, then the benchmark's own config and plugins go on top.
        made = subprocess.run([str(self.binary), "-i", str(self.home)], capture_output=True, text=True)
        if made.returncode != 0:
            raise PeerUnavailable(f"haraka -i failed: {made.stderr.strip()[-1000:]}")
        shutil.copytree(HARAKA_DIR / "config", self.home / "config", dirs_exist_ok=True)
        shutil.copytree(HARAKA_DIR / "plugins", self.home / "plugins", dirs_exist_ok=True)
        self.port = free_port()
        smtp_ini = self.home / "config" / "smtp.ini"
        smtp_ini.write_text("".join(
            f"listen=127.0.0.1:{self.port}\n" if line.startswith("listen=") else line
            for line in smtp_ini.read_text().splitlines(keepends=True)
        ))
        log = self.home / "haraka.log"
        # A session of its own: SIGTERM to the master stops its cluster workers.
        self.process = subprocess.Popen(
            [str(self.binary), "-c", str(self.home)], cwd=self.home,
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_banner(self.port, self.process, "Haraka", log)

    def stored(self) -> int:
        return sum(1 for _ in (self.home / "queue").glob("*.eml"))

    def stop(self) -> None:
        # The whole session this script started: the master and its cluster workers.
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


class MailpipePeer(Peer):
    def __init__(
        self, name: str, label: str, work: Path, workers: int, pipeline_concurrency: int, console: bool = True
    ) -> None:
        super().__init__(name, label)
        self.server = Mailpipe(work / name.replace(" ", "_").replace("(", "").replace(")", ""), workers,
                               pipeline_concurrency, console)
        self.archived_rates: dict[str, list[float]] = {}

    def start(self) -> None:
        self.server.start()
        self.port, self.recipient, self.process = self.server.port, self.server.address, self.server.process

    def stored(self) -> int:
        return self.server.archived()


# --- clients ---------------------------------------------------------------------


def run_smtp_source(port: int, messages: int, sessions: int, size: int, recipient: str, reuse: bool) -> float:
    command = [
        "smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), *(["-d"] if reuse else []),
        "-f", SENDER, "-t", recipient, "-M", "bench.client", f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return elapsed


async def _python_session(port: int, numbers: range, size: int, recipient: str, reuse: bool, run: str) -> None:
    line = b"X" * 78 + b"\r\n"
    body = line * max(1, size // len(line))
    connection = None

    async def reply(reader: asyncio.StreamReader, expect: bytes) -> None:
        while True:
            answer = await reader.readline()
            if not answer:
                raise RuntimeError("the server closed the connection")
            if answer[3:4] != b"-":
                if not answer.startswith(expect):
                    raise RuntimeError(f"unexpected reply {answer!r}")
                return

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader, b"220")
        writer.write(b"EHLO bench.client\r\n")
        await reply(reader, b"250")
        return reader, writer

    async def quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"QUIT\r\n")
        await reply(reader, b"221")
        writer.close()

    for number in numbers:
        reader, writer = connection or await connect()
        header = (f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: bench {number}\r\n"
                  f"Message-ID: <bench-{run}-{number}@bench.client>\r\n\r\n").encode()
        for command, expect in ((f"MAIL FROM:<{SENDER}>", b"250"), (f"RCPT TO:<{recipient}>", b"250"),
                                ("DATA", b"354")):
            writer.write(command.encode() + b"\r\n")
            await reply(reader, expect)
        writer.write(header + body + b".\r\n")
        await reply(reader, b"250")
        if reuse:
            connection = reader, writer
        else:
            await quit(reader, writer)
    if connection:
        await quit(*connection)


def run_python_client(port: int, messages: int, sessions: int, size: int, recipient: str, reuse: bool) -> float:
    # Every message unique: mailpipe's sink stores identical messages once.
    run = secrets.token_hex(8)

    async def main() -> None:
        await asyncio.gather(*(
            _python_session(port, range(index, messages, sessions), size, recipient, reuse, run)
            for index in range(sessions)
        ))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


# --- the run --------------------------------------------------------------------------


def median_ratio(numerators: list[float], denominators: list[float]) -> tuple[float, list[float]]:
    ratios = [n / d for n, d in zip(numerators, denominators)]
    return statistics.median(ratios), ratios


def measure(peer: Peer, mode: str, send: Callable[..., float], args: argparse.Namespace, number: int) -> str:
    """One timed round of one peer in one mode; returns the round's text for that peer."""
    before = peer.stored()
    cpu_before = cpu_seconds(peer.pids())
    started = time.perf_counter()
    seconds = send(peer.port, args.messages, args.sessions, args.size, peer.recipient, mode == "reused")
    peer.rates.setdefault(mode, []).append(args.messages / seconds)
    text = f"{peer.label} {args.messages / seconds:,.0f}"
    if isinstance(peer, MailpipePeer):
        archived = peer.server.wait_archived(before + args.messages) - before
        if archived != args.messages:
            raise RuntimeError(f"round {number}: {peer.label} archived {archived} of {args.messages} messages")
        archived_rate = args.messages / (time.perf_counter() - started)
        peer.archived_rates.setdefault(mode, []).append(archived_rate)
        # mailpipe's CPU time counts its archiving too (until the round is archived).
        text += f" (archived {archived_rate:,.0f})"
    elif before is not None:
        stored = peer.stored() - before
        if stored != args.messages:
            raise RuntimeError(f"round {number}: {peer.label} stored {stored} of {args.messages} messages")
    peer.cpu_ms.setdefault(mode, []).append((cpu_seconds(peer.pids()) - cpu_before) * 1000 / args.messages)
    return text


def run_rounds(running: list[Peer], send: Callable[..., float], args: argparse.Namespace) -> None:
    """Warm-up, then the timed rounds, alternating peers; records each peer's rates and peak RSS."""
    for mode in args.modes:
        for peer in running:
            if args.warmup:
                send(peer.port, args.warmup, args.sessions, args.size, peer.recipient, mode == "reused")
    for peer in running:
        if isinstance(peer, MailpipePeer):  # the warm-up is archived before timing starts
            peer.server.wait_archived(args.warmup * len(args.modes))
    for number in range(1, args.rounds + 1):
        for mode in args.modes:
            shift = (number - 1) % len(running)
            order = running[shift:] + running[:shift]
            texts = [measure(peer, mode, send, args, number) for peer in order]
            print(f"round {number}, {MODES[mode]}: " + "; ".join(texts) + " msg/s", flush=True)
    for peer in running:
        peer.peak_rss = peak_rss_mib(peer.pids())


def report(peers: list[Peer], modes: list[str], skipped: dict[str, str], args: argparse.Namespace) -> None:
    by_name = {peer.name: peer for peer in peers}
    mailpipes = [peer for peer in peers if isinstance(peer, MailpipePeer)]
    print(f"\nmedian of {args.rounds} rounds, messages/s acknowledged (mailpipe and Haraka: 250 after fsync):\n")
    print("| peer | " + " | ".join(MODES[mode] for mode in modes) + " | peak RSS, all processes |")
    print("|---|" + "---|" * len(modes) + "---|")
    for peer in peers:
        cells = [f"{statistics.median(peer.rates[mode]):,.0f}" for mode in modes]
        print(f"| {peer.label} | " + " | ".join(cells) + f" | {peer.peak_rss:.0f} MiB |")
        if isinstance(peer, MailpipePeer):
            cells = [f"{statistics.median(peer.archived_rates[mode]):,.0f}" for mode in modes]
            print(f"| {peer.label}, archived end to end | " + " | ".join(cells) + " | |")
    for name, reason in skipped.items():
        print(f"| {name} | " + " | ".join("skipped" for _ in modes) + f" | {reason} |")

    # Less sensitive to a busy machine than the rates: what each message cost
    # the peer's own processes (mailpipe: intake and archiving, until archived).
    print("\nCPU time per message, ms (user + system, all the peer's processes; median of the rounds):\n")
    print("| peer | " + " | ".join(MODES[mode] for mode in modes) + " |")
    print("|---|" + "---|" * len(modes))
    for peer in peers:
        print(f"| {peer.label} | " + " | ".join(f"{statistics.median(peer.cpu_ms[mode]):.3f}" for mode in modes) + " |")

    print("\nratios (median of the per-round ratios; rounds in brackets):")
    for mode in modes:
        print(f"{MODES[mode]}:")
        for mailpipe in mailpipes:
            for numerator, denominator, target in TARGETS:
                name = f"{mailpipe.label} {'archived' if numerator == 'archived' else 'acknowledged'}"
                if denominator not in by_name:
                    why = f"skipped: {skipped[denominator]}" if denominator in skipped else "not in --peers"
                    print(f"  {name} / {denominator}: n/a ({why})")
                    continue
                mine = mailpipe.archived_rates[mode] if numerator == "archived" else mailpipe.rates[mode]
                ratio, rounds = median_ratio(mine, by_name[denominator].rates[mode])
                verdict = ("ceiling, no target" if target is None
                           else f"target >= {target:.1f}x: {'met' if ratio >= target else 'NOT met'}")
                print(f"  {name} / {denominator}: {ratio:.2f}x "
                      f"({', '.join(f'{r:.2f}' for r in rounds)})  {verdict}")


def make_peers(args: argparse.Namespace, work: Path) -> list[Peer]:
    peers: list[Peer] = []
    for name in args.peers:
        if name == "mailpipe":
            for workers in args.workers:
                for console in args.console:
                    label = "mailpipe" if workers == 1 else f"mailpipe --workers {workers}"
                    if len(args.console) > 1:
                        label += f" (console {console})"
                    peers.append(MailpipePeer(label, label, work, workers, args.pipeline_concurrency, console == "on"))
        elif name == "haraka":
            peers.append(Haraka("haraka", "haraka (nodes=cpus, fsync queue)", args.haraka, work))
        elif name == "aiosmtpd":
            peers.append(Aiosmtpd("aiosmtpd", "aiosmtpd (discards)"))
        else:
            peers.append(SmtpSink("smtp-sink", "smtp-sink (discards)"))
    return peers


def comma_list(choices: tuple[str, ...] | None = None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        wrong = [item for item in items if choices and item not in choices]
        if not items or wrong:
            raise argparse.ArgumentTypeError(f"{', '.join(wrong) or 'nothing'} is not one of {', '.join(choices or ())}")
        return items
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=5000, help="messages per peer, mode and round")
    parser.add_argument("-c", "--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("-s", "--size", type=int, default=4096, help="message payload bytes")
    parser.add_argument("--peers", type=comma_list(PEER_NAMES), default=list(PEER_NAMES),
                        help=f"comma-separated, default all: {','.join(PEER_NAMES)}")
    parser.add_argument("--workers", type=lambda text: [int(w) for w in comma_list()(text)], default=[1, 2],
                        help="mailpipe serve --workers values, each a peer of its own (default 1,2)")
    parser.add_argument("--modes", type=comma_list(tuple(MODES)), default=list(MODES),
                        help="reused and/or per-message (default both)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3; the median is reported)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="messages sent to each peer in each mode before timing (default 1000; mailpipe "
                             "archives them first, so its spool has files to reuse, as in steady operation)")
    parser.add_argument("--console", type=comma_list(("on", "off")), default=["on"],
                        help="mailpipe with the HTTP console on and/or off ([http] listen); 'on,off' measures "
                             "both side by side (default on, the product's default)")
    parser.add_argument("--client", choices=("auto", "smtp-source", "python"), default="auto")
    parser.add_argument("--haraka", type=Path, default=ROOT / "var" / "haraka",
                        help="where benchmarks/haraka/install.sh installed Haraka (default var/haraka)")
    parser.add_argument("--pipeline-concurrency", type=int, default=1,
                        help="[pipeline] concurrency of mailpipe (default 1, the product default)")
    args = parser.parse_args()
    # SIGTERM (a stopped `make bench`) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_smtp: terminated"))
    if args.rounds < 1 or args.messages < 1:
        parser.error("--rounds and --messages must be at least 1")

    client = args.client if args.client != "auto" else ("smtp-source" if shutil.which("smtp-source") else "python")
    send = run_smtp_source if client == "smtp-source" else run_python_client
    print(f"bench_smtp: {args.messages} messages x {args.size} bytes over {args.sessions} sessions, client {client}, "
          f"warm-up {args.warmup} per peer and mode, {args.rounds} rounds, modes {', '.join(args.modes)}, "
          f"{os.cpu_count()} CPUs", flush=True)

    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as temporary:
        peers = make_peers(args, Path(temporary))
        running: list[Peer] = []
        try:
            for peer in peers:
                try:
                    peer.start()
                    running.append(peer)
                except (PeerUnavailable, RuntimeError) as reason:
                    if isinstance(peer, MailpipePeer):
                        raise
                    # An optional peer that cannot run is reported, not fatal.
                    skipped[peer.name] = str(reason).splitlines()[0]
                    print(f"skipped {peer.name}: {reason}", flush=True)
            if not running:
                raise SystemExit("no peer could start")
            print("peers: " + ", ".join(peer.label for peer in running), flush=True)
            run_rounds(running, send, args)
        except RuntimeError as error:
            raise SystemExit(f"bench_smtp: {error}") from None
        finally:
            for peer in running:
                peer.stop()
    report(running, args.modes, skipped, args)


if __name__ == "__main__":
    main()
