"""SIGHUP for sinks: a sink whose optional settings changed is rebuilt and
swapped into the running pipeline between batches.

Which settings: those its sink type declares optional
(mailpipe.reload.optional_sink_setting; e.g. the filesystem sink's
``fsync``, the s3 sink's ``prefix``, ``storage_class``, timeouts). A
required setting (a filesystem ``path``, a ``bucket``), a sink's ``type``,
``name`` or ``required``, and sinks added or removed need a restart; the
reload's log line names them.

Why this is safe: the new sink object is built first, by its type's factory,
which validates the settings (an error is logged and the old sink stays);
a batch already being delivered keeps the sink slot it started with, and the
old sink is closed only once those batches are done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from mailpipe.config import Config
from mailpipe.errors import MailpipeError
from mailpipe.pipeline.delivery import Pipeline, SinkSlot
from mailpipe.reload import optional_sink_setting

if TYPE_CHECKING:
    from mailpipe.runtime import Runtime
    from mailpipe.types import Sink

log = logging.getLogger("mailpipe.reload")

IDLE_POLL_SECONDS = 0.1


class SinkReloader:
    """An applier for mailpipe.reload.on_reload, in the process that runs the pipeline."""

    def __init__(self, runtime: "Runtime", pipeline: Pipeline, group: TaskGroup) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.group = group
        # Compared with what runs now, not with the start: a sink is rebuilt
        # once per change, not on every later SIGHUP.
        self.applied: dict[str, dict[str, Any]] = {t["name"]: dict(t) for t in runtime.config.sinks}

    def __call__(self, _started_with: Config, new: Config) -> list[str]:
        reloaded: list[str] = []
        tables = {t["name"]: dict(t) for t in new.sinks}
        for index, slot in enumerate(list(self.pipeline.sinks)):
            before, after = self.applied.get(slot.name), tables.get(slot.name)
            if before is None or after is None or before == after or before["type"] != after["type"]:
                continue
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            if not all(optional_sink_setting(self.runtime.host, before["type"], key) for key in changed):
                continue  # named as needing a restart by mailpipe.reload
            try:
                rebuilt = self.runtime.build_sink(after)
            except MailpipeError as error:
                log.error("sink not reloaded; it keeps its settings", extra={"sink": slot.name, "error": str(error)})
                continue
            self.pipeline.sinks[index] = SinkSlot(slot.name, rebuilt.sink, slot.required)
            self.applied[slot.name] = after
            self.group.start_soon(self._close_when_done, slot.sink, set(self.pipeline._inflight))
            log.info("sink reloaded", extra={"sink": slot.name, "settings": changed})
            reloaded += [f"sinks.{slot.name}.{key}" for key in changed]
        return reloaded

    async def _close_when_done(self, sink: "Sink", batches: set[str]) -> None:
        try:
            # Pipeline._inflight: the spool ids of the batches being delivered
            # now; those that started before the swap may still use ``sink``.
            while batches & self.pipeline._inflight:
                await anyio.sleep(IDLE_POLL_SECONDS)
        finally:
            with anyio.CancelScope(shield=True):
                await sink.aclose()
