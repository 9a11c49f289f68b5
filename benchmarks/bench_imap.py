"""Benchmark: mailpipe pulls 10,000 messages of 4 KiB from Dovecot over TLS.

Measured: a real ``mailpipe serve`` with one ``imap`` connection
(after_archive=delete) and the filesystem sink, from the moment
``mailpipe connections enable`` returns (what an operator sees: the server
learns of the change, starts the collector, pulls) until every message is
archived (fsynced in the spool, deleted from the server, stored and fsynced
in the sink, spool drained).

Peers, in the same run against the same mailbox, each timed from its start
until it has written everything:

* ``imaplib``: Python's ``imaplib`` over TLS fetching the mailbox in batches
  of 500 (``UID FETCH BODY.PEEK[]``) and writing + fsyncing each message to
  its own file. Target: mailpipe ≥ 1.0× its rate.
* ``mbsync`` (isync): one ``mbsync`` run pulling INBOX into a new Maildir
  (``Sync Pull``, TLS verified against the fixture's CA; isync fsyncs by
  default). Target: mailpipe ≥ 1.5× its rate. Skipped, with the reason
  printed, when ``mbsync`` is not installed.

Both peers do less than mailpipe (no spool, no delete, no sink, no
metadata). Each round fills a fresh mailbox; imaplib and mbsync take turns
going first, and mailpipe goes last because it empties the mailbox.

The Dovecot is a private instance (tests/support/peers/dovecot.py; needs root and
``dovecot-imapd``). The mailbox is filled by writing Maildir files
directly, then read once unmeasured so both runs see a warm index.

    python benchmarks/bench_imap.py                  # 10,000 × 4 KiB, 3 rounds, median reported
    python benchmarks/bench_imap.py -n 500 --rounds 3  # a quick check
"""

from __future__ import annotations

import argparse
import imaplib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchlib import ROOT  # noqa: F401  (first: it makes tests.support importable)
from tests.support.helpers import ServerProcess, cli, write_config
from tests.support.peers.dovecot import Dovecot

TARGET_RATIO = 1.0  # mailpipe / imaplib
MBSYNC_TARGET_RATIO = 1.5  # mailpipe / mbsync
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


MBSYNCRC = """\
IMAPAccount dovecot
Host {host}
Port {port}
User {user}
Pass "{password}"
SSLType IMAPS
CertificateFile {ca_file}

IMAPStore far
Account dovecot

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX

Channel bench
Far :far:
Near :near:
Patterns INBOX
Sync Pull
Create Near
SyncState *
"""


def run_mbsync(dovecot: Dovecot, user: str, password: str, out: Path) -> tuple[int, float]:
    """One ``mbsync`` run pulling INBOX into a fresh Maildir: (messages written, seconds)."""
    (out / "maildir").mkdir(parents=True)  # mbsync creates the folders, not the store's root
    config = out / "mbsyncrc"
    # isync 1.4 matches the certificate against DNS names only (not IP
    # addresses); the fixture's certificate names "localhost", which is 127.0.0.1.
    config.write_text(MBSYNCRC.format(host="localhost", port=dovecot.imaps_port, user=user, password=password,
                                      ca_file=dovecot.ca_file, maildir=out / "maildir"))
    config.chmod(0o600)
    started = time.perf_counter()
    done = subprocess.run(["mbsync", "-q", "-c", str(config), "bench"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mbsync failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    inbox = out / "maildir" / "INBOX"
    written = sum(1 for sub in ("cur", "new") for _ in (inbox / sub).iterdir())
    return written, seconds


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
        # The clock starts when the CLI returns: the reload, the collector's
        # start and its login are part of what the operator waits for.
        started = time.time()

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


def median_ratio(numerators: list[float], denominators: list[float]) -> str:
    """The median of the per-round ratios, then each round's, e.g. ``1.11x (1.07, 1.11, 1.12)``."""
    ratios = [n / d for n, d in zip(numerators, denominators)]
    return f"{statistics.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=10000, help="messages per round (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a freshly filled mailbox")
    parser.add_argument("--serve-args", default="", help='extra `mailpipe serve` arguments, e.g. "--workers 2"')
    args = parser.parse_args()
    mbsync = shutil.which("mbsync")

    print(f"messages: {args.messages} x {MESSAGE_SIZE} B, Dovecot over TLS on 127.0.0.1, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds", flush=True)
    if not mbsync:
        print("skipped mbsync: not installed (Debian/Ubuntu: apt-get install isync)", flush=True)
    rates: dict[str, list[float]] = {"imaplib": [], "mbsync": [], "archived": [], "collected": []}  # messages/s
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp, Dovecot() as dovecot:
        for number in range(1, args.rounds + 1):
            work = Path(tmp) / f"round-{number}"
            work.mkdir()
            user = f"bench{number}"
            password = dovecot.add_user(user)
            fill_maildir(dovecot, user, args.messages)
            peers = {"imaplib": run_baseline}
            if mbsync:
                peers["mbsync"] = run_mbsync
            # The two peers take turns going first; mailpipe goes last, as it empties the mailbox.
            order = list(peers) if number % 2 else list(reversed(peers))
            seconds: dict[str, float] = {}
            for name in order:
                written, seconds[name] = peers[name](dovecot, user, password, work / name)
                if written != args.messages:
                    raise SystemExit(f"round {number}: {name} wrote {written} of {args.messages} messages")
                rates[name].append(written / seconds[name])
            count, archived_seconds, collected_seconds = run_mailpipe(
                dovecot, user, password, work / "mailpipe", args.messages, args.serve_args.split()
            )
            rates["archived"].append(count / archived_seconds)
            rates["collected"].append(count / collected_seconds)
            peer_text = "; ".join(f"{name} {rates[name][-1]:,.0f} messages/s ({seconds[name]:.2f} s)" for name in order)
            print(f"round {number}: {peer_text}; mailpipe archived {rates['archived'][-1]:,.0f} messages/s "
                  f"({archived_seconds:.2f} s), stage 1 (spooled + deleted) {rates['collected'][-1]:,.0f} "
                  f"messages/s", flush=True)

    def median(name: str) -> str:
        return f"{statistics.median(rates[name]):7,.0f} messages/s"

    print(f"median of {args.rounds} rounds:")
    print(f"imaplib   batches of {BASELINE_BATCH}, write + fsync each:                   {median('imaplib')}")
    if mbsync:
        print(f"mbsync    Sync Pull into a new Maildir (fsync on):              {median('mbsync')}")
    print(f"mailpipe  from `connections enable` until all archived:         {median('archived')}")
    print(f"mailpipe  stage 1 only: all fsynced in the spool + deleted:     {median('collected')}")
    print("ratios (median of the per-round ratios; rounds in brackets):")
    targets = [("imaplib", TARGET_RATIO)] + ([("mbsync", MBSYNC_TARGET_RATIO)] if mbsync else [])
    for name, target in targets:
        ratio = statistics.median(a / b for a, b in zip(rates["archived"], rates[name]))
        print(f"  mailpipe archived / {name}: {median_ratio(rates['archived'], rates[name])}  "
              f"target >= {target:.1f}x: {'met' if ratio >= target else 'NOT met'}")
    if not mbsync:
        print("  mailpipe archived / mbsync: n/a (mbsync not installed)")
    print(f"  mailpipe stage 1 / imaplib: {median_ratio(rates['collected'], rates['imaplib'])}")


if __name__ == "__main__":
    main()
