"""Memory stays flat: 20 concurrent 140 MiB messages archived byte for byte.

Starts `mailpipe serve` (filesystem sink, one smtp_o365 connection), sends
``--messages`` messages of ``--size-mb`` MiB at the same time, one SMTP
session each (Python's smtplib, one thread per session), waits until the
pipeline has archived every one, checks each archived file's SHA-256
against what was sent, and prints the peak resident memory (VmHWM) summed
over all mailpipe processes (the server, its SMTP workers, the pipeline).

Messages are streamed, never held whole: the peak must not grow with the
message size or count. Issue 16 measured 113 MB for 20 × 140 MB; the limit
printed here (``--limit-mib``, default 300) is the one tests/core/intake/test_smtp_large.py
holds its smaller case (10 × 50 MB) to.

    python benchmarks/bench_memory.py                        # 20 x 140 MiB (needs ~3 GB of disk)
    python benchmarks/bench_memory.py --workers 2
    python benchmarks/bench_memory.py --messages 3 --size-mb 10   # a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import Mailpipe, peak_rss_mib

SENDER = "journal@contoso.com"
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-abc\r\n"


def make_body(size: int) -> bytes:
    """About ``size`` bytes of 78-octet lines; every 1000th starts with a dot (dot-stuffing in play)."""
    block = LINE * 999 + b"." + LINE[1:]
    return block * max(1, size // len(block))


def send_all(port: int, recipient: str, count: int, body: bytes) -> dict[str, str]:
    """Sends ``count`` messages at once; returns {sha256 of each message: the server's 250 text}."""
    wire_body = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"  # dot-stuffed once, shared by all sessions
    accepted: dict[str, str] = {}
    failures: list[str] = []

    def send_one(number: int) -> None:
        header = f"Subject: big {number}\r\nMessage-ID: <big-{number}-{time.time_ns()}@bench>\r\n\r\n".encode()
        digest = hashlib.sha256(header)
        digest.update(body)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=600) as client:
                client.ehlo("bench.client")
                client.mail(SENDER, [f"SIZE={len(header) + len(body)}"])
                client.rcpt(recipient)
                if client.docmd("DATA")[0] != 354:
                    raise smtplib.SMTPException("DATA refused")
                client.sock.sendall(header)
                client.sock.sendall(wire_body)
                code, text = client.getreply()
            if code != 250:
                raise smtplib.SMTPException(f"{code} {text.decode(errors='replace')}")
            accepted[digest.hexdigest()] = text.decode()
        except (OSError, smtplib.SMTPException) as error:
            failures.append(f"message {number}: {error}")

    threads = [threading.Thread(target=send_one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit("bench_memory: not accepted: " + "; ".join(failures))
    return accepted


def archived_digests(archive: Path) -> set[str]:
    """SHA-256 of each archived file, computed from its bytes (not taken from its name)."""
    digests = set()
    for path in archive.glob("*/??/*.eml"):
        with open(path, "rb") as handle:
            digests.add(hashlib.file_digest(handle, "sha256").hexdigest())
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--messages", type=int, default=20, help="concurrent messages (default 20)")
    parser.add_argument("--size-mb", type=float, default=140, help="size of each message in MiB (default 140)")
    parser.add_argument("--workers", type=int, default=1, help="mailpipe serve --workers (default 1)")
    parser.add_argument("--limit-mib", type=float, default=300, help="peak RSS limit, all processes (default 300)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_memory: terminated"))

    body = make_body(int(args.size_mb * 1024 * 1024))
    print(f"bench_memory: {args.messages} concurrent messages of {len(body) / 1024 / 1024:.0f} MiB, "
          f"mailpipe serve --workers {args.workers}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as temporary:
        mailpipe = Mailpipe(Path(temporary), args.workers)
        try:
            mailpipe.start()
            started = time.perf_counter()
            accepted = send_all(mailpipe.port, mailpipe.address, args.messages, body)
            acknowledged = time.perf_counter() - started
            archived = mailpipe.wait_archived(args.messages, timeout=1800)
            archived_seconds = time.perf_counter() - started
            if archived != args.messages:
                raise SystemExit(f"bench_memory: {archived} of {args.messages} messages archived within 1800 s")
            peak = peak_rss_mib(pids := mailpipe.pids())
            same = archived_digests(mailpipe.root / "archive") == set(accepted)
        finally:
            mailpipe.stop()
    total_mib = args.messages * len(body) / 1024 / 1024
    print(f"all acknowledged after {acknowledged:.1f} s, all archived after {archived_seconds:.1f} s "
          f"({total_mib / archived_seconds:.0f} MiB/s end to end)")
    print(f"archived byte for byte (SHA-256 of every file): {'yes' if same else 'NO'}")
    print(f"peak RSS, sum over {len(pids)} mailpipe processes: {peak:.0f} MiB "
          f"(limit {args.limit_mib:.0f} MiB: {'met' if peak < args.limit_mib else 'NOT met'})")
    if not same:
        raise SystemExit("bench_memory: the archive does not hold exactly the messages sent")


if __name__ == "__main__":
    main()
