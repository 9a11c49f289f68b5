"""Prometheus metrics: counters where the events happen, one /metrics page.

mailpipe is several processes (the server, the pipeline process, SMTP
worker processes), so the counters use prometheus-client's multiprocess
mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
under the data dir before it starts any child, every process writes its
counts to its own memory-mapped file there, and /metrics (in the server)
adds them up. Nothing is sent between processes and a restarted pipeline
process keeps its predecessor's counts. Spool depth and quarantine count
are read from the spool at scrape time, not counted.

The metric objects are made on first use, after ``enable_multiprocess``
has chosen where values live; a command that never serves (the CLI) counts
in memory and throws the counts away.
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from mailpipe.connections.live_status import LIVE

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(data_dir: Path) -> Path:
    """A fresh metrics directory for this server and its children (inherited env).

    One per ``serve`` process (``<data_dir>/metrics/<pid>``): a second
    ``serve`` started by mistake cannot wipe a running one's counts; the
    directories of servers no longer running are removed.
    """
    parent = data_dir / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if not (old.name.isdigit() and _alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    directory = parent / str(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import values

    # prometheus-client picks the value class when it is imported; this
    # process may have imported it before the directory existed.
    values.ValueClass = values.get_value_class()
    return directory


class _Metrics:
    @cached_property
    def accepted(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_messages_accepted", "Messages accepted by SMTP (250), per connection",
                       ["connection"])

    @cached_property
    def refused(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_messages_refused", "Messages refused at the end of DATA, per connection and reply class",
                       ["connection", "reply_class"])

    @cached_property
    def recipients_refused(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_recipients_refused", "RCPT TO refused (unknown or disabled address, ...)",
                       ["reason", "reply_class"])

    @cached_property
    def archived(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_messages_archived", "Messages stored by a sink", ["sink"])

    @cached_property
    def sink_errors(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_sink_errors", "Failed attempts to store a message in a sink", ["sink"])

    @cached_property
    def store_seconds(self) -> Any:
        from prometheus_client import Histogram

        return Histogram("mailpipe_sink_store_seconds", "Time to store one batch in a sink", ["sink"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    @cached_property
    def collector_errors(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_collector_errors", "Collector failures (restarted with back-off)",
                       ["connection"])

    @cached_property
    def collected(self) -> Any:
        from prometheus_client import Counter

        return Counter("mailpipe_messages_collected", "Messages collected (IMAP and other pull types) and spooled",
                       ["connection", "type"])


METRICS = _Metrics()


def count_reply(connections: list[str], reply: str) -> None:
    """An SMTP end-of-data reply, counted for each connection it was for."""
    for connection in connections or [""]:
        if reply.startswith("2"):
            METRICS.accepted.labels(connection).inc()
            LIVE.message_received(connection)
        else:
            METRICS.refused.labels(connection, reply[:1] + "xx").inc()


class SpoolCollector:
    """Spool depth and quarantine count, read when /metrics is scraped."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from mailpipe.spool.queue import QUARANTINE, QUEUE

        for name, where, text in (
            ("mailpipe_spool_depth", QUEUE, "Messages waiting in the spool"),
            ("mailpipe_quarantine_count", QUARANTINE, "Messages in the quarantine"),
        ):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], _count(self.runtime.config.spool_dir / where))
            yield family


def render(runtime: Any) -> tuple[bytes, str]:
    """The /metrics page: every process's counters plus the spool gauges."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    shared = bool(os.environ.get(MULTIPROC_ENV))
    if shared:
        multiprocess.MultiProcessCollector(registry)
    registry.register(SpoolCollector(runtime))
    body = generate_latest(registry)
    return (body if shared else generate_latest(REGISTRY) + body), CONTENT_TYPE_LATEST


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours to clean up
        return True
    return True


def _count(directory: Path) -> int:
    """Committed messages in a spool directory (names only: a scrape reads no message)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    return sum(1 for name in names if name.endswith(".json") and not name.endswith(".state.json"))
