"""`mailpipe serve --workers 2`: SMTP in two listener processes sharing the port,
the pipeline in the server process."""

from __future__ import annotations

import socket
from pathlib import Path

from helpers import ServerProcess, cli, wait_until
from smtp_helpers import make_setup, queue_id_of, send, wait_for_arrival

SENDER = "journal@contoso.com"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


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
        workers = _children(server.process.pid)
        assert len(workers) == 2
        assert len([e for e in server.logs() if e.get("msg") == "SMTP listener ready"]) == 2

        queue_ids = []
        for number in range(12):  # new connections: the kernel spreads them over both workers
            with setup.client() as client:
                code, reply, _ = send(client, SENDER, [added["address"]], f"Subject: w{number}\r\n\r\nx\r\n".encode())
                assert code == 250, (code, reply)
                queue_ids.append(queue_id_of(reply))
        for queue_id in queue_ids:  # picked up by the server's pipeline
            wait_for_arrival(setup.archive, queue_id)

        cli(setup.config, "connections", "disable", added["id"], check=True)

        def all_refuse() -> bool:
            codes = set()
            for _ in range(6):
                with setup.client() as client:
                    client.mail(SENDER)
                    codes.add(client.rcpt(added["address"])[0])
            return codes == {451}

        wait_until(all_refuse, timeout=15, message="a worker kept accepting for a disabled connection")
    finally:
        server.kill()  # SIGKILL: the workers must not outlive the server
    wait_until(lambda: _refused(setup.port), timeout=15, message="a worker outlived the killed server")
