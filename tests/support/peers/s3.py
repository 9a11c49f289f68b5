"""A real S3 API server (moto in server mode) that tests can take down and bring back.

Why not ``moto.mock_aws``: the S3 sink runs inside a ``mailpipe serve``
subprocess, and the behaviour under test is what happens on the wire when the
endpoint refuses connections, cuts them, or hangs.  Only a real HTTP server
on a real port can do that.

Why a private host process instead of ``python -m moto.server`` or moto's
``ThreadedMotoServer`` in the test process:

* ``python -m moto.server`` keeps its state only in memory, so stopping it
  loses every bucket: an outage test could not check that objects written
  before the outage are still there.
* ``ThreadedMotoServer.stop()`` does not close the listening socket (new
  connections pile up in the backlog and hang instead of being refused) and
  leaves keep-alive connections serving; in the test process it would also
  share moto's global state with any ``mock_aws`` a test uses.

So this module is also a small program (``python s3.py --port N``): it hosts
moto's WSGI app on 127.0.0.1 in a separate process and obeys ``start`` /
``stop`` commands on stdin.  Semantics of :class:`MotoS3`:

==================  ===========================================================
``stop()``          listener closed (connections are *refused*), open
                    keep-alive connections are cut; **state is kept**.
``start()``         listens again on the **same port**; buckets and objects
                    from before are still there.
``kill()``          SIGKILL of the host process: a crash; **state is lost**;
                    a later ``start()`` brings up an empty server on the same
                    port.
``pause()``         SIGSTOP: connections are accepted by the kernel but never
                    answered (timeouts); ``resume()`` continues, state kept.
``reset()``         empty every bucket/backend (``/moto-api/reset``).
==================  ===========================================================

The host process exits by itself when its stdin closes, i.e. when the test
process goes away, and the kernel SIGKILLs it if the test process dies
(``PR_SET_PDEATHSIG``, which also covers a paused host), so nothing outlives
the test run.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .process import LOOPBACK, die_with_parent, free_port
from tests.support.paths import REPO_ROOT

REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


class MotoError(RuntimeError):
    """The moto host process misbehaved (did not start, answer or stop)."""


class MotoS3:
    """Controls one moto host process on ``127.0.0.1:<port>``; see the module docstring."""

    def __init__(self, port: int | None = None, log_file: str | os.PathLike[str] | None = None) -> None:
        self._port = port or free_port()
        if log_file is None:
            handle, name = tempfile.mkstemp(prefix="mailpipe-moto-", suffix=".log")
            os.close(handle)
            self._own_log = True
            self.log_file = Path(name)
        else:
            self._own_log = False
            self.log_file = Path(log_file)
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._listening = False
        self._paused = False

    # -- properties ------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def region(self) -> str:
        return REGION

    @property
    def listening(self) -> bool:
        """True between start() and stop()/kill() (a paused server still counts)."""
        return self._listening and self._alive()

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Listen on the port; spawn the host process if there is none (fresh state)."""
        self.resume()
        if self.listening:
            return
        if not self._alive():
            self._spawn()
        else:
            self._command("start")
        self._expect("ready", timeout)
        self._listening = True

    def stop(self, timeout: float = 30.0) -> None:
        """Outage, state kept: the port refuses connections and open ones are cut."""
        self.resume()
        if not self.listening:
            return
        self._command("stop")
        self._expect("stopped", timeout)
        self._listening = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """Crash, state lost: SIGKILL the host process."""
        process = self._process
        self._process, self._listening, self._paused, self._buffer = None, False, False, b""
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def pause(self) -> None:
        """Hang: the process is frozen (SIGSTOP); clients time out instead of being refused."""
        if self._alive() and not self._paused:
            assert self._process is not None
            os.killpg(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._alive() and self._paused:
            assert self._process is not None
            os.killpg(self._process.pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def down(self, mode: str = "stop") -> Iterator[None]:
        """``with s3.down(): ...`` - an outage for the block; *mode* is stop, kill or pause."""
        {"stop": self.stop, "kill": self.kill, "pause": self.pause}[mode]()
        try:
            yield
        finally:
            if mode == "pause":
                self.resume()
            else:
                self.start()

    def reset(self) -> None:
        """Forget all buckets and objects (the server must be listening)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def close(self) -> None:
        """Stop for good: close stdin (the host exits by itself), then make sure it is gone."""
        process = self._process
        if process is not None:
            self.resume()
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self._own_log and os.environ.get("MAILPIPE_KEEP_PEER_DIRS") != "1":
            with contextlib.suppress(OSError):
                self.log_file.unlink()

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no moto log)"

    # -- clients ---------------------------------------------------------------------

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this endpoint with dummy credentials.

        Keyword arguments go into ``botocore.config.Config`` (defaults: path
        addressing, 5 s connect timeout, 2 attempts in total so that an outage
        shows up quickly).
        """
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "connect_timeout": 5,
            "read_timeout": 30,
            "retries": {"total_max_attempts": 2, "mode": "standard"},
        }
        options.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=DUMMY_CREDENTIALS["AWS_SESSION_TOKEN"],
            config=Config(**options),
        )

    # -- talking to the host process -------------------------------------------------

    def _spawn(self) -> None:
        self._buffer = b""
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.peers.s3", "--host", LOOPBACK, "--port", str(self._port)],
                # run as a module of the peers package, so its relative imports resolve
                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # its own group: pause()/kill() reach only it
                preexec_fn=die_with_parent(signal.SIGKILL),  # even when paused (SIGSTOP)
            )

    def _command(self, word: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(word.encode() + b"\n")
            self._process.stdin.flush()
        except OSError as error:
            raise MotoError(f"moto host is gone ({error})\n{self.log_tail()}") from error

    def _expect(self, word: str, timeout: float) -> None:
        """Wait (bounded) for the host to print *word*; 'error ...' lines become exceptions."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text == word:
                    return
                if text.startswith("error"):
                    raise MotoError(f"moto host: {text}\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MotoError(f"moto host did not say {word!r} within {timeout}s\n{self.log_tail()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise MotoError(
                        f"moto host exited (status {self._process.wait(5)}) before saying {word!r}\n"
                        f"{self.log_tail()}"
                    )
                self._buffer += chunk


# ----------------------------------------------------------------------------------
# The host program: python s3.py --host 127.0.0.1 --port N
# ----------------------------------------------------------------------------------


def _host_main(host: str, port: int) -> int:
    """Serve moto on host:port; obey 'start'/'stop' lines on stdin; exit on EOF."""
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import ThreadedWSGIServer

    class CuttableServer(ThreadedWSGIServer):
        """Remembers open connections so that stop() can cut keep-alive ones too."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.open_connections: set[socket.socket] = set()
            self.open_lock = threading.Lock()

        def process_request(self, request: Any, client_address: Any) -> None:
            with self.open_lock:
                self.open_connections.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            with self.open_lock:
                self.open_connections.discard(request)
            super().shutdown_request(request)

        def cut_connections(self) -> None:
            with self.open_lock:
                connections = list(self.open_connections)
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    app = DomainDispatcherApplication(create_backend_app)
    server: CuttableServer | None = None
    thread: threading.Thread | None = None

    def say(word: str) -> None:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()

    def start() -> None:
        nonlocal server, thread
        if server is not None:
            say("ready")
            return
        try:
            server = CuttableServer(host, port, app, handler=MotoRequestHandler)
        except OSError as error:
            say(f"error cannot listen on {host}:{port}: {error}")
            return
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        say("ready")

    def stop() -> None:
        nonlocal server, thread
        if server is not None:
            server.shutdown()  # leave serve_forever()
            server.server_close()  # close the listener: new connections are refused
            server.cut_connections()  # and keep-alive ones end now
            assert thread is not None
            thread.join()
        server = thread = None
        say("stopped")

    start()
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            start()
        elif command == "stop":
            stop()
        elif command:
            say(f"error unknown command {command!r}")
    # stdin closed: the controlling test process is done (or dead).
    if server is not None:
        server.server_close()
        server.cut_connections()
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    sys.exit(_host_main(arguments.host, arguments.port))
