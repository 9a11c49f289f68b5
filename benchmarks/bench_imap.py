"""Benchmark: mailpipe pulls 5,000 messages of 4 KiB from Dovecot over TLS.

Measured: a real ``mailpipe serve`` with one ``imap`` connection
(after_archive=delete) and the filesystem sink, from the moment its
collector starts until every message is archived (fsynced in the spool,
deleted from the server, stored and fsynced in the sink, spool drained).

Baseline, in the same run against the same mailbox: Python's ``imaplib``
over TLS fetching the mailbox in batches of 500 (``UID FETCH BODY.PEEK[]``)
and writing + fsyncing each message to its own file. The baseline does
less than mailpipe (no spool, no delete, no sink, no metadata); the target
is mailpipe ≥ 1.0× its rate.

The Dovecot is a private instance (tests/peers/dovecot.py; needs root and
``dovecot-imapd``). The mailbox is filled by writing Maildir files
directly, then read once unmeasured so both runs see a warm index.

    python benchmarks/bench_imap.py                  # 5,000 × 4 KiB, 3 rounds, median reported
    python benchmarks/bench_imap.py --messages 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import imaplib
import os
import re
import secrets
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ServerProcess, cli, write_config  # noqa: E402
from peers.dovecot import Dovecot  # noqa: E402

TARGET_RATIO = 1.0
MESSAGE_SIZE = 4096
BASELINE_BATCH = 500


def message(number: int) -> bytes:
    head = (
        f"From: sender{number}@contoso.com\r\nTo: journal@contoso.com\r\n"
        f"Subject: benchmark message {number}\r\nMessage-ID: <{number}.{secrets.token_hex(6)}@bench>\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = (line * (MESSAGE_SIZE // len(line) + 1))[: MESSAGE_SIZE - len(head) - 2]
    return head + body + b"\r\n"


def fill_maildir(dovecot: Dovecot, user: str, count: int) -> None:
    """Drop messages straight into the Maildir (far faster than APPEND)."""
    with dovecot.session(user) as client:  # makes Dovecot create the Maildir
        client.select("INBOX")
    maildir = dovecot.maildir(user)
    owner = maildir.stat()
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(exist_ok=True)
        os.chown(maildir / sub, owner.st_uid, owner.st_gid)
    stamp = int(time.time())
    for number in range(count):
        path = maildir / "new" / f"{stamp}.M{number}P{os.getpid()}.bench"
        path.write_bytes(message(number))
        os.chown(path, owner.st_uid, owner.st_gid)
    # One unmeasured pass: Dovecot indexes the new files and both runs start warm.
    assert len(dovecot.uids(user)) == count


def run_baseline(dovecot: Dovecot, user: str, password: str, out: Path) -> tuple[int, float]:
    out.mkdir()
    started = time.perf_counter()
    client = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=dovecot.ssl_context())
    client.login(user, password)
    client.select("INBOX")
    uids = client.uid("SEARCH", "ALL")[1][0].split()
    written = 0
    for start in range(0, len(uids), BASELINE_BATCH):
        batch = uids[start : start + BASELINE_BATCH]
        typ, data = client.uid("FETCH", b"%s:%s" % (batch[0], batch[-1]), "(BODY.PEEK[])")
        assert typ == "OK"
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = re.search(rb"UID (\d+)", item[0])
            name = uid.group(1).decode() if uid else str(written)
            with open(out / f"{name}.eml", "wb") as handle:
                handle.write(item[1])
                handle.flush()
                os.fsync(handle.fileno())
            written += 1
    client.logout()
    return written, time.perf_counter() - started


def run_mailpipe(
    dovecot: Dovecot, user: str, password: str, work: Path, count: int, serve_args: list[str] | None = None
) -> tuple[int, float, float]:
    """(archived, seconds until all archived, seconds until all collected)."""
    work.mkdir()
    config = write_config(work)
    args = ["connections", "add", "imap", "--description", "bench"]
    for key, value in {
        "server": dovecot.host, "port": dovecot.imaps_port, "username": user,
        "password": password, "ca_file": dovecot.ca_file,
    }.items():
        args += ["--set", f"{key}={value}"]
    connection_id = cli(config, *args, check=True).json["id"]
    queue = work / "data" / "spool" / "queue"
    with ServerProcess(config, args=tuple(serve_args or ())) as server:
        cli(config, "connections", "enable", connection_id, check=True)
        started = _log_time(server.wait_for_log("starting collector", 30))

        def passes() -> list[dict]:
            return [e for e in server.logs() if e.get("msg") == "collected messages"]

        def done() -> bool:
            # The cheap look first: the harness shares the CPUs it measures.
            return not os.listdir(queue) and sum(e["count"] for e in passes()) >= count

        deadline = time.monotonic() + 600
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit(f"mailpipe did not archive {count} messages within 600 s")
            time.sleep(0.05)
        archived_after = time.time() - started
        collected_after = _log_time(passes()[-1]) - started
    archived = sum(1 for _ in (work / "archive" / connection_id).glob("??/*.eml"))
    left = len(dovecot.uids(user))
    if archived != count or left:
        raise SystemExit(f"mailpipe archived {archived} of {count}; {left} left on the server")
    return archived, archived_after, collected_after


def _log_time(entry: dict) -> float:
    return datetime.fromisoformat(entry["time"]).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a freshly filled mailbox")
    parser.add_argument("--serve-args", default="", help='extra `mailpipe serve` arguments, e.g. "--workers 2"')
    args = parser.parse_args()

    print(f"messages: {args.messages} x {MESSAGE_SIZE} B, Dovecot over TLS on 127.0.0.1, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds")
    rounds: list[tuple[float, float, float]] = []  # baseline, archived, collected (messages/s)
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp, Dovecot() as dovecot:
        for number in range(1, args.rounds + 1):
            work = Path(tmp) / f"round-{number}"
            work.mkdir()
            user = f"bench{number}"
            password = dovecot.add_user(user)
            fill_maildir(dovecot, user, args.messages)
            base_count, base_seconds = run_baseline(dovecot, user, password, work / "baseline")
            assert base_count == args.messages, base_count
            count, archived_seconds, collected_seconds = run_mailpipe(
                dovecot, user, password, work / "mailpipe", args.messages, args.serve_args.split()
            )
            rates = (base_count / base_seconds, count / archived_seconds, count / collected_seconds)
            rounds.append(rates)
            print(f"round {number}: baseline {rates[0]:7,.0f} messages/s ({base_seconds:.2f} s); mailpipe "
                  f"archived {rates[1]:7,.0f} messages/s ({archived_seconds:.2f} s, ratio "
                  f"{rates[1] / rates[0]:.2f}x); stage 1 (spooled + deleted) {rates[2]:7,.0f} messages/s "
                  f"(ratio {rates[2] / rates[0]:.2f}x)", flush=True)

    ratios = sorted(archived / base for base, archived, _ in rounds)
    base_rate, archived_rate, collected_rate = sorted(rounds, key=lambda r: r[1] / r[0])[len(rounds) // 2]
    ratio = ratios[len(ratios) // 2]
    print(f"median round ({len(rounds)} rounds):")
    print(f"baseline  imaplib, batches of {BASELINE_BATCH}, write+fsync each:  {base_rate:7,.0f} messages/s")
    print(f"mailpipe  until all archived in the filesystem sink:           {archived_rate:7,.0f} messages/s  "
          f"ratio {ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"mailpipe  stage 1 only: all fsynced in the spool + deleted:     {collected_rate:7,.0f} messages/s  "
          f"ratio {collected_rate / base_rate:.2f}x")
    print(f"target: archived >= {TARGET_RATIO:.1f}x baseline -> {'met' if ratio >= TARGET_RATIO else 'NOT met'}")


if __name__ == "__main__":
    main()
