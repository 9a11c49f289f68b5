"""A Maildir drop folder: files in new/ are spooled, then removed."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread

from mailpipe.types import CollectContext, Connection


def maildir_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"{path} does not exist or is not a directory; create it with new/, cur/ and tmp/"
    missing = [name for name in ("new", "cur", "tmp") if not (path / name).is_dir()]
    if missing:
        return f"{path} is not a Maildir: missing {', '.join(missing)}/"
    if not os.access(path / "new", os.R_OK | os.W_OK):
        return f"mailpipe may not read and delete files in {path / 'new'}"
    return None


async def collect_forever(connection: Connection, context: CollectContext) -> None:
    new = Path(connection.settings["path"]) / "new"
    interval = int(connection.settings.get("poll_interval", 1))
    while True:
        names = sorted(await anyio.to_thread.run_sync(os.listdir, new))
        for name in names:
            path = new / name
            data = await anyio.to_thread.run_sync(path.read_bytes)
            # The spool call returns only once the message is fsynced: only
            # then is it safe to remove the original.
            spool_id = await context.spool_bytes(
                data, {"source": {"maildir": str(new.parent), "file": name}}
            )
            await anyio.to_thread.run_sync(path.unlink)
            context.log.info("collected", extra={"file": name, "spool_id": spool_id})
        await anyio.sleep(interval if not names else 0)
