"""A vendor sink: one JSON object per line, the message base64-encoded."""

from __future__ import annotations

import base64
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import anyio.to_thread

from mailpipe.types import SinkContext, SpooledMessage, TestResult


class JsonLinesSink:
    def __init__(self, name: str, settings: dict[str, Any], context: SinkContext) -> None:
        if not settings.get("path"):
            raise ValueError("the example_jsonl sink needs path = \"/some/file.jsonl\"")
        self.name = name
        path = Path(settings["path"])
        self.path = path if path.is_absolute() else Path(context.config_dir) / path

    async def store(self, message: SpooledMessage) -> None:
        await anyio.to_thread.run_sync(self._append, message)

    def _append(self, message: SpooledMessage) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            # Idempotent: a retried delivery of the same spool id is not appended twice.
            for line in handle:
                if json.loads(line)["spool_id"] == message.id:
                    return
            record = {
                "spool_id": message.id,
                "sha256": message.sha256,
                "metadata": message.metadata,
                "raw": base64.b64encode(message.path.read_bytes()).decode(),
            }
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    async def test(self) -> TestResult:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as error:
            return TestResult(ok=False, error=f"cannot append to {self.path}: {error.strerror}")
        return TestResult(ok=True)

    async def aclose(self) -> None:
        return None
