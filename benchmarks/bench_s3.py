"""Benchmark: 2,000 messages of 4 KiB through the s3 sink into an S3 API server.

Baseline, measured in the same run against the same server: a naive
sequential ``put_object`` loop (one boto3 client, one message after the
other). The sink is driven the way the pipeline drives it: many messages
at once (``--workers`` concurrent ``store`` calls), each one a checked
``.eml`` upload plus its ``.json`` metadata object, on one shared client
with at most ``--max-concurrency`` requests in flight.

The server is moto's S3 (server mode), hosted by this script in a
subprocess on 127.0.0.1 (werkzeug's threaded server). moto is pure Python
in one process, so on a small machine it is CPU-bound: every request costs
it a couple of milliseconds of one core whatever the client does. A real
object store is the opposite: cheap per request but tens of milliseconds
away. ``--latency-ms`` models that by delaying each request in the server
(a sleep, which costs no CPU); each latency is its own scenario, and every
scenario prints its own baseline and ratio.

    python benchmarks/bench_s3.py                      # scenarios 0 ms and 20 ms
    python benchmarks/bench_s3.py --latency-ms 0,10,20 --messages 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_RATIO = 3.0
MESSAGE_SIZE = 4096
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# --- the server (a subprocess of this script) -------------------------------------------


def serve(port: int, latency_ms: float) -> None:
    """moto's WSGI app on 127.0.0.1:port, every request delayed by latency_ms."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import ThreadedWSGIServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log
    app = DomainDispatcherApplication(create_backend_app)
    delay = latency_ms / 1000.0

    def delayed(environ: dict[str, Any], start_response: Any) -> Any:
        if delay:
            time.sleep(delay)  # the network and the store's service time; no CPU spent
        return app(environ, start_response)

    server = ThreadedWSGIServer("127.0.0.1", port, delayed, handler=MotoRequestHandler)
    print("ready", flush=True)
    server.serve_forever()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    endpoint: str

    def cpu_seconds(self) -> float:
        try:
            import psutil
        except ImportError:
            return float("nan")
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_server(latency_ms: float) -> Server:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        raise SystemExit(f"the moto server did not start (exit {process.wait(10)})")
    return Server(process, f"http://127.0.0.1:{port}")


# --- the two clients ---------------------------------------------------------------------


def make_messages(directory: Path, count: int) -> list[Any]:
    import anyio

    from mailpipe.spool.queue import Spool

    spool = Spool(directory / "spool")

    async def write() -> list[Any]:
        messages = []
        for index in range(count):
            header = f"Subject: bench {index}\r\nMessage-ID: <{index}@bench>\r\n\r\n".encode()
            body = os.urandom((MESSAGE_SIZE - len(header)) // 4 * 3).hex().encode()[: MESSAGE_SIZE - len(header)]
            raw = (header + body).ljust(MESSAGE_SIZE, b"x")
            messages.append(await spool.write_bytes(raw, {"connection_id": "bench", "provenance": "smtp"}))
        return messages

    return anyio.run(write)


def naive_loop(endpoint: str, messages: list[Any]) -> float:
    """What one writes first: read the file, put_object, next."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="naive")
    started = time.perf_counter()
    for message in messages:
        client.put_object(Bucket="naive", Key=f"{message.sha256}.eml", Body=message.path.read_bytes())
    elapsed = time.perf_counter() - started
    assert count_objects(client, "naive") == len(messages)
    return elapsed


def count_objects(client: Any, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def through_sink(
    endpoint: str, messages: list[Any], workers: int, max_concurrency: int, directory: Path, client_cpu: list[float]
) -> float:
    import anyio
    import boto3

    from mailpipe.sinks.s3 import S3Sink
    from mailpipe.types import SinkContext

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sink")
    sink = S3Sink(
        "s3",
        {"bucket": "sink", "endpoint_url": endpoint, "max_concurrency": max_concurrency},
        SinkContext(str(directory), str(directory)),
    )

    async def run() -> float:
        result = await sink.test()  # also builds the client: not part of the timing
        if not result.ok:
            raise SystemExit(f"sink test failed: {result.error}")
        pending = iter(messages)

        async def worker() -> None:
            for message in pending:
                await sink.store(message)

        started, cpu_started = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker)
        elapsed = time.perf_counter() - started
        client_cpu.append(time.process_time() - cpu_started)
        await sink.aclose()
        return elapsed

    elapsed = anyio.run(run)
    stored = count_objects(boto3.client("s3", endpoint_url=endpoint), "sink")
    assert stored == 2 * len(messages), f"expected {2 * len(messages)} objects, found {stored}"
    return elapsed


# --- the run ---------------------------------------------------------------------------------


def scenario(latency_ms: float, messages: list[Any], args: argparse.Namespace, directory: Path) -> float:
    server = start_server(latency_ms)
    try:
        cpu_before, client_before = server.cpu_seconds(), time.process_time()
        naive = naive_loop(server.endpoint, messages)
        cpu_naive, client_naive = server.cpu_seconds() - cpu_before, time.process_time() - client_before
        client_sink: list[float] = []
        sink = through_sink(server.endpoint, messages, args.workers, args.max_concurrency, directory, client_sink)
        cpu_sink = server.cpu_seconds() - cpu_before - cpu_naive
    finally:
        server.close()
    count = len(messages)
    naive_rate, sink_rate = count / naive, count / sink
    ratio = sink_rate / naive_rate
    print(f"\nserver latency {latency_ms:g} ms per request")
    print(f"  naive put_object loop : {naive_rate:8.1f} msg/s  ({naive:6.2f} s, 1 object/msg; CPU per msg: "
          f"server {cpu_naive / count * 1000:.2f} ms, client {client_naive / count * 1000:.2f} ms)")
    print(f"  s3 sink               : {sink_rate:8.1f} msg/s  ({sink:6.2f} s, 2 objects/msg; CPU per msg: "
          f"server {cpu_sink / count * 1000:.2f} ms, client {client_sink[0] / count * 1000:.2f} ms; "
          f"server busy {cpu_sink / sink:.0%}, client {client_sink[0] / sink:.0%} of a core)")
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    print(f"  ratio sink / naive    : {ratio:8.2f}x  ({verdict} the {TARGET_RATIO:g}x target)")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated scenarios (default 0,20)")
    parser.add_argument("--workers", type=int, default=32, help="concurrent store() calls")
    parser.add_argument("--max-concurrency", type=int, default=32, help="the sink's max_concurrency")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, float(args.latency_ms))
        return 0
    os.environ.update(CREDENTIALS)
    print(f"bench_s3: {args.messages} messages of {MESSAGE_SIZE} bytes; sink with {args.workers} concurrent "
          f"stores, max_concurrency {args.max_concurrency}; moto server on 127.0.0.1; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-s3-") as name:
        directory = Path(name)
        messages = make_messages(directory, args.messages)
        for latency in [float(v) for v in args.latency_ms.split(",") if v.strip()]:
            scenario(latency, messages, args, directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
