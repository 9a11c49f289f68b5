"""Delivers spooled messages to every sink, with retries and quarantine.

Rules:
- a message leaves the spool only when every *required* sink confirmed;
  an *optional* sink may fail without holding the others back;
- a failure is retried with capped exponential backoff and full jitter (so
  a store that comes back is not hit by every waiting message at once);
- the sink says what failed (mailpipe.errors): an *unavailable* sink (an
  outage: refused, timed out, throttled, misconfigured) is waited for as
  long as ``outage_retry_for`` (days by default) and never costs the message
  an attempt; a *rejected* message, or any error the sink does not classify,
  counts toward ``max_attempts``, after which the message moves to the
  quarantine with its reason, from which ``mailpipe spool retry`` brings it
  back;
- progress is recorded per sink beside the message, so after a restart a
  sink that already confirmed is not asked again (sinks are idempotent
  anyway).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from datetime import datetime, timezone
from typing import Any, Callable

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from mailpipe.config import PipelineConfig
from mailpipe.spool.disk_space import storage_full
from mailpipe.errors import MessageRejected, SinkUnavailable, leaf_errors
from mailpipe.logs import ConditionLog
from mailpipe.connections.live_status import LIVE
from mailpipe.connections.metrics import METRICS
from mailpipe.pipeline.sink_batch import store_each
from mailpipe.spool.queue import QUARANTINE, QUEUE, DeliveryState, Spool, SpooledMessage
from mailpipe.types import BatchSink, Failure, SinkSlot

log = logging.getLogger("mailpipe.pipeline")

Enricher = Callable[[SpooledMessage], dict[str, Any]]
RESCAN_SECONDS = 1.0
#: Consecutive failures of one message (not an outage) that turn its connection red.
LIVE_STATUS_FAILURES = 3
BATCH_PATIENCE_SECONDS = 0.005
#: A batch whose progress could not be recorded (disk full) is tried again after this.
STORAGE_RETRY_SECONDS = 10.0


class Pipeline:
    def __init__(
        self,
        spool: Spool,
        sinks: list[SinkSlot],
        settings: PipelineConfig | None = None,
        enrichers: list[Enricher] | None = None,
        recover_at_start: bool = True,
    ) -> None:
        if not any(slot.required for slot in sinks):
            raise ValueError("at least one sink must be required, or mail would leave the spool unstored")
        self.spool = spool
        self.sinks = sinks
        self.settings = settings or PipelineConfig()
        self.enrichers = enrichers or []
        # False where other processes write to the spool while this one
        # starts: whoever starts them recovers first (Spool.recover).
        self.recover_at_start = recover_at_start
        self._due: list[tuple[float, str]] = []
        self._known: set[str] = set()
        self._inflight: set[str] = set()
        self._wakeup = anyio.Event()
        self.delivered = 0
        self.quarantined = 0
        # An outage fails every waiting message again and again: one line a
        # minute per failing sink set, not one per message and retry.
        self._outage_log = ConditionLog(log)
        spool.subscribe(self._on_new)

    # --- scheduling --------------------------------------------------------

    def _on_new(self, message: SpooledMessage) -> None:
        self._schedule(message.id, 0.0)

    def announced(self, spool_id: str) -> None:
        """Another process spooled ``spool_id`` (see mailpipe.spool.notify)."""
        if spool_id not in self._known:
            self._schedule(spool_id, 0.0)

    def _schedule(self, spool_id: str, when: float) -> None:
        self._known.add(spool_id)
        heapq.heappush(self._due, (when, spool_id))
        self._wakeup.set()

    def _scan(self) -> None:
        for spool_id in sorted(self.spool.pending_ids() - self._known):
            self._schedule(spool_id, self.spool.state(spool_id).next_attempt)

    def _take_due(self, now: float) -> str | None:
        if self._due and self._due[0][0] <= now:
            return heapq.heappop(self._due)[1]
        return None

    # --- running -----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver forever: what is already spooled first, then what arrives."""
        if self.recover_at_start:
            await anyio.to_thread.run_sync(self.spool.recover)
        await anyio.to_thread.run_sync(self._scan)
        send, receive = anyio.create_memory_object_stream[str](max_buffer_size=math.inf)
        async with anyio.create_task_group() as group:
            for _ in range(max(1, self.settings.concurrency)):
                group.start_soon(self._worker, receive.clone())
            task_status.started()
            next_scan = time.monotonic() + RESCAN_SECONDS
            while True:
                now = time.time()
                while (spool_id := self._take_due(now)) is not None:
                    send.send_nowait(spool_id)
                if time.monotonic() >= next_scan:
                    await anyio.to_thread.run_sync(self._scan)
                    next_scan = time.monotonic() + RESCAN_SECONDS
                wait = RESCAN_SECONDS
                if self._due:
                    wait = min(wait, max(0.0, self._due[0][0] - time.time()))
                self._wakeup = anyio.Event()
                with anyio.move_on_after(wait):
                    await self._wakeup.wait()

    async def _worker(self, receive: Any) -> None:
        async with receive:
            async for spool_id in receive:
                batch = [spool_id]
                limit = max(1, self.settings.batch_size)
                # Mail arrives a message at a time; a few milliseconds of
                # patience turn a trickle into batches that share their syncs.
                for patience in (0.0, BATCH_PATIENCE_SECONDS):
                    if patience:
                        await anyio.sleep(patience)
                    while len(batch) < limit:
                        try:
                            batch.append(receive.receive_nowait())
                        except anyio.WouldBlock:
                            break
                    if len(batch) >= limit:
                        break
                try:
                    await self.process_batch(batch)
                except Exception as error:
                    if not _all_storage_full(error):
                        raise
                    self._storage_full(batch, error)

    def _storage_full(self, spool_ids: list[str], error: Exception) -> None:
        """Progress could not be recorded (a full disk): keep running and try
        the batch again later, instead of exiting into a restart loop."""
        self.spool.space.note_failure(error)  # the log line, rate-limited
        retry_at = time.time() + STORAGE_RETRY_SECONDS
        for spool_id in spool_ids:
            self._schedule(spool_id, retry_at)

    async def drain(self) -> None:
        """Process everything due now, then return (for tests and one-shot use)."""
        await anyio.to_thread.run_sync(self.spool.recover)
        await anyio.to_thread.run_sync(self._scan)
        while (spool_id := self._take_due(time.time())) is not None:
            await self.process(spool_id)

    # --- one message -------------------------------------------------------

    async def process(self, spool_id: str) -> None:
        await self.process_batch([spool_id])

    async def process_batch(self, spool_ids: list[str]) -> None:
        """Deliver several messages; a ``BatchSink`` gets them at once."""
        # Scheduled twice (announce and rescan) or already being delivered: skip.
        chosen = [i for i in dict.fromkeys(spool_ids) if i not in self._inflight]
        self._inflight.update(chosen)
        try:
            await self._process_batch(chosen)
        finally:
            self._inflight.difference_update(chosen)

    async def _process_batch(self, spool_ids: list[str]) -> None:
        loaded = await anyio.to_thread.run_sync(self._load_and_enrich, spool_ids)
        for spool_id in set(spool_ids) - {m.id for m, _ in loaded}:
            self._known.discard(spool_id)  # delivered by another worker, or retried away
        errors: dict[str, dict[str, Failure]] = {}

        async def deliver(slot: SinkSlot) -> None:
            todo = [m for m, state in loaded if slot.name not in state.stored_in]
            started = time.monotonic()
            failed = await _store_all(slot, todo)
            if todo:
                METRICS.store_seconds.labels(slot.name).observe(time.monotonic() - started)
                METRICS.archived.labels(slot.name).inc(len(todo) - len(failed))
                METRICS.sink_errors.labels(slot.name).inc(len(failed))
            # By id: ``message in todo`` compared whole dataclasses, a
            # quadratic cost per batch (94,000 comparisons per 3,000 messages at 64).
            todo_ids = {m.id for m in todo}
            for message, state in loaded:
                if message.id in todo_ids and message.id not in failed:
                    state.stored_in.append(slot.name)
            for spool_id, failure in failed.items():
                if slot.required:
                    errors.setdefault(spool_id, {})[slot.name] = failure
                else:
                    log.warning(
                        "optional sink failed; the message is not held back for it",
                        extra={"spool_id": spool_id, "sink": slot.name, "error": describe(failure)},
                    )

        async with anyio.create_task_group() as group:
            for slot in self.sinks:
                group.start_soon(deliver, slot)
        delivered = [(m, state) for m, state in loaded if m.id not in errors]
        await anyio.to_thread.run_sync(self._remove_all, delivered)
        for message, _state in delivered:
            self._known.discard(message.id)
        self.delivered += len(delivered)
        for message, _state in delivered:
            LIVE.archived(message.metadata.get("connection_id"))
        if delivered:
            # One line per batch: per-message lines cost more CPU than the
            # archiving itself at thousands of messages a second.
            log.info(
                "messages archived",
                extra={
                    "count": len(delivered),
                    "spool_ids": [m.id for m, _ in delivered],
                    "connections": sorted({str(m.metadata.get("connection_id")) for m, _ in delivered}),
                    "stored_in": sorted({name for _, state in delivered for name in state.stored_in}),
                },
            )
        for message, state in loaded:
            if message.id in errors:
                await self._failed(message, state, errors[message.id])

    def _load_and_enrich(self, spool_ids: list[str]) -> list[tuple[SpooledMessage, DeliveryState]]:
        loaded = []
        for spool_id in spool_ids:
            message = self.spool.load(spool_id)
            if message is None:
                continue
            self._enrich(message)
            loaded.append((message, self.spool.state(spool_id)))
        return loaded

    def _remove_all(self, delivered: list[tuple[SpooledMessage, DeliveryState]]) -> None:
        for message, state in delivered:
            self.spool.remove(message.id, has_state=state.on_disk)

    async def _failed(self, message: SpooledMessage, state: Any, errors: dict[str, Failure]) -> None:
        state.attempts += 1
        state.last_error = "; ".join(f"sink {name}: {describe(failure)}" for name, failure in errors.items())
        now = time.time()
        outage = all(is_outage(failure) for failure in errors.values())
        if outage:
            state.outage_since = state.outage_since or now
            give_up = now - state.outage_since >= self.settings.outage_retry_for
        else:
            state.message_failures += 1
            give_up = state.message_failures >= self.settings.max_attempts
        if outage or state.message_failures >= LIVE_STATUS_FAILURES:
            LIVE.failed(message.metadata.get("connection_id"), "sink", state.last_error)
        if give_up:
            await self._quarantine(message, state, outage)
            return
        delay = self.retry_delay(state.attempts)
        state.next_attempt = now + delay
        await anyio.to_thread.run_sync(self.spool.save_state, message.id, state)
        facts = {
            "spool_id": message.id,
            "attempt": state.attempts,
            "outage": outage,
            "retry_in_seconds": round(delay, 3),
            "error": state.last_error,
        }
        if outage:
            condition = "sink_unavailable:" + ",".join(sorted(errors))
            self._outage_log.warn(condition, "sink unavailable; will retry", **facts)
        else:
            log.warning("sink failed; will retry", extra=facts)
        self._schedule(message.id, state.next_attempt)

    def retry_delay(self, attempts: int) -> float:
        """Capped exponential backoff with full jitter: a random wait up to the
        exponential bound, never under ``backoff_initial`` (so a long queue
        spreads its retries instead of arriving together at a recovering store)."""
        initial, cap = self.settings.backoff_initial, self.settings.backoff_max
        bound = min(cap, initial * 2 ** min(attempts - 1, 64))
        return random.uniform(min(initial, bound), bound)

    async def _quarantine(self, message: SpooledMessage, state: Any, outage: bool) -> None:
        state.quarantined_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        await anyio.to_thread.run_sync(self.spool.save_state, message.id, state)
        await anyio.to_thread.run_sync(self.spool.move, message.id, QUEUE, QUARANTINE)
        self._known.discard(message.id)
        self.quarantined += 1
        if outage:
            text = (
                "message quarantined: its sink stayed unavailable longer than [pipeline] "
                "outage_retry_for; fix the sink, then `mailpipe spool retry`"
            )
        else:
            text = "message quarantined after repeated sink failures; fix the sink, then `mailpipe spool retry`"
        log.error(text, extra={"spool_id": message.id, "attempts": state.attempts, "error": state.last_error})

    def _enrich(self, message: SpooledMessage) -> None:
        """Add parsed facts to the metadata handed to the sinks.

        Not written back to the spool: a retried message is parsed again,
        which costs less than a durable metadata rewrite for every message.
        """
        for enricher in self.enrichers:
            try:
                message.metadata.update(enricher(message))
            except Exception as error:  # parsing is best effort; the bytes are the evidence
                message.metadata.setdefault("warnings", []).append(
                    f"{getattr(enricher, '__name__', 'enricher')} failed: {error}"
                )


async def _store_all(slot: SinkSlot, messages: list[SpooledMessage]) -> dict[str, Failure]:
    """Store in one sink; returns ``{spool id: failure}`` for the failures."""
    if not messages:
        return {}
    if isinstance(slot.sink, BatchSink):
        try:
            return dict(await slot.sink.store_batch(messages))
        except Exception as error:
            return {m.id: error for m in messages}
    return await store_each(slot.sink, messages)


def describe(failure: Failure) -> str:
    return failure if isinstance(failure, str) else (str(failure) or type(failure).__name__)


def is_outage(failure: Failure) -> bool:
    """True when the sink is unavailable (the message waits out the outage);
    False when the message is to blame: rejected, or an error no sink
    classified (counted toward max_attempts, as a bug in one message's
    handling must not hold it forever)."""
    if isinstance(failure, MessageRejected):
        return False
    return isinstance(failure, (SinkUnavailable, ConnectionError, TimeoutError))


def _all_storage_full(error: BaseException) -> bool:
    return all(storage_full(leaf) for leaf in leaf_errors(error))




def retry_quarantined(spool: Spool, spool_ids: list[str] | None = None) -> list[str]:
    """Move quarantined messages back to the queue with a fresh attempt count."""
    chosen = spool_ids or [m.id for m in spool.pending(QUARANTINE)]
    moved = []
    for spool_id in chosen:
        if spool.load(spool_id, QUARANTINE) is None:
            raise KeyError(spool_id)
        state = spool.state(spool_id, QUARANTINE)
        state.attempts, state.next_attempt, state.quarantined_at = 0, 0.0, None
        state.message_failures, state.outage_since = 0, None
        spool.save_state(spool_id, state, QUARANTINE)
        spool.move(spool_id, QUARANTINE, QUEUE)
        moved.append(spool_id)
    return moved
