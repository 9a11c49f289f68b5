"""`mailpipe serve --workers 2`: SMTP in two listener processes sharing the port,
the pipeline in a third process at idle CPU priority."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

from tests.support.helpers import ServerProcess, child_pids, cli, wait_until
from tests.support.smtp import make_setup, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"


def _role_of(pid: int) -> str:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return "pipeline" if b"mailpipe.server.pipeline_process" in command else "smtp"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except OSError:
        return True


def test_workers_accept_reload_and_die_with_the_server(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    added = setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    server = ServerProcess(setup.config, args=("--workers", "2")).start()
    try:
        server.wait_for_log("SMTP worker processes ready")
        assert server.process is not None
        children = child_pids(server.process.pid)
        roles = sorted(_role_of(pid) for pid in children)
        assert roles == ["pipeline", "smtp", "smtp"]
        assert len([e for e in server.logs() if e.get("msg") == "SMTP listener ready"]) == 2
        assert server.wait_for_log("pipeline process ready")["cpu_priority"] == "idle"
        pipeline = next(pid for pid in children if _role_of(pid) == "pipeline")
        assert os.sched_getscheduler(pipeline) == os.SCHED_IDLE
        for pid in children:
            if _role_of(pid) == "smtp":
                assert os.sched_getscheduler(pid) == os.SCHED_OTHER

        queue_ids = []
        for number in range(12):  # new connections: the kernel spreads them over both workers
            with setup.client() as client:
                code, reply, _ = send(client, SENDER, [added["address"]], f"Subject: w{number}\r\n\r\nx\r\n".encode())
                assert code == 250, (code, reply)
                queue_ids.append(queue_id_of(reply))
        for queue_id in queue_ids:  # picked up by the pipeline process
            wait_for_arrival(setup.archive, queue_id)

        # A pipeline process that dies is restarted, and what arrived
        # meanwhile waits in the spool for it.
        os.kill(pipeline, signal.SIGKILL)
        with setup.client() as client:
            code, reply, _ = send(client, SENDER, [added["address"]], b"Subject: while down\r\n\r\nx\r\n")
            assert code == 250, (code, reply)
        wait_for_arrival(setup.archive, queue_id_of(reply))
        server.wait_for_log("child process exited; restarting", child="pipeline process")

        cli(setup.config, "connections", "disable", added["id"], check=True)

        def all_refuse() -> bool:
            codes = set()
            for _ in range(6):
                with setup.client() as client:
                    client.mail(SENDER)
                    codes.add(client.rcpt(added["address"])[0])
            return codes == {451}

        wait_until(all_refuse, timeout=15, message="a worker kept accepting for a disabled connection")
        children = child_pids(server.process.pid)
    finally:
        server.kill()  # SIGKILL: the workers must not outlive the server
    wait_until(lambda: _refused(setup.port), timeout=15, message="a worker outlived the killed server")
    wait_until(
        lambda: not any(_alive(pid) for pid in children), timeout=15,
        message="a child process outlived the killed server",
    )


def test_one_smtp_process_and_a_pipeline_at_normal_priority(tmp_path: Path) -> None:
    """Without --workers, cpu_priority "auto" leaves the pipeline process at
    normal priority (one intake process leaves a core free)."""
    setup = make_setup(tmp_path)
    added = setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    server = ServerProcess(setup.config).start()
    try:
        assert server.wait_for_log("pipeline process ready")["cpu_priority"] == "normal"
        assert server.process is not None
        (pipeline,) = child_pids(server.process.pid)
        assert _role_of(pipeline) == "pipeline"
        assert os.sched_getscheduler(pipeline) == os.SCHED_OTHER
        with setup.client() as client:
            code, reply, _ = send(client, SENDER, [added["address"]], b"Subject: one\r\n\r\nx\r\n")
            assert code == 250, (code, reply)
        wait_for_arrival(setup.archive, queue_id_of(reply))
    finally:
        server.stop()


def _sessions_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP sessions on local ``port`` each of ``pids`` holds."""
    inodes_on_port = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                inodes_on_port.add(fields[9])
    counts = {}
    for pid in pids:
        held = set()
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(descriptor) if descriptor.is_symlink() else ""
            if target.startswith("socket:["):
                held.add(target[len("socket:[") : -1])
        counts[pid] = len(held & inodes_on_port)
    return counts


def test_sessions_opened_at_start_are_spread_over_every_worker(tmp_path: Path) -> None:
    """A sender that connects the moment the port answers (Office 365 after a
    restart) and keeps its sessions open must not end up on one worker: the
    server binds every worker's socket before any worker starts."""
    setup = make_setup(tmp_path)
    setup.add("o365", "smtp_o365", undeliverable_journal_address=SENDER)
    server = ServerProcess(setup.config, args=("--workers", "2"))
    starting = threading.Thread(target=server.start, daemon=True)
    starting.start()
    sessions: list[socket.socket] = []
    try:
        wait_until(lambda: not _refused(setup.port), timeout=30, message="the SMTP port never opened")
        sessions = [socket.create_connection(("127.0.0.1", setup.port), timeout=30) for _ in range(20)]
        for session in sessions:  # each gets its banner once its worker serves
            assert session.recv(512).startswith(b"220")
        starting.join(30)
        assert server.process is not None
        workers = [pid for pid in child_pids(server.process.pid) if _role_of(pid) == "smtp"]
        counts = _sessions_by_process(setup.port, workers)
        assert len(counts) == 2 and sum(counts.values()) == 20, counts
        assert all(count >= 1 for count in counts.values()), f"every session went to one worker: {counts}"
    finally:
        for session in sessions:
            session.close()
        starting.join(30)
        server.stop()
