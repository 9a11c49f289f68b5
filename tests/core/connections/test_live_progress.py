"""The arithmetic behind a collector's progress (mailpipe.connections.live_progress) with
an injected clock, and its way through the live-status flush into a real
SQLite state store (migration 4): messages left, rate, time left, absent
when unknown, idle or stale, and no store write once there is nothing new."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailpipe.connections.live_progress import (
    RATE_WINDOW_SECONDS,
    STALE_SECONDS,
    RateWindow,
    progress_fields,
    progress_text,
    time_left,
)
from mailpipe.connections.live_status import WRITES_KEY, LiveStatus, live_fields
from mailpipe.connections.store import SQLiteStore
from mailpipe.common.timestamps import format_utc


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def notes(self, window: RateWindow, *steps: tuple[float, int]) -> RateWindow:
        """Advance by each step's seconds, then note its count."""
        for seconds, collected in steps:
            self.now += seconds
            window.note(collected)
        return window


def test_rate_counts_from_the_start_of_a_run_then_over_the_window() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.note(0)  # the collector found mail: the run starts here
    assert window.rate() is None  # nothing collected yet: unknown, not zero
    clock.now += 2
    window.note(200)
    assert window.rate() == pytest.approx(100.0)  # 200 in the 2 s since the run began
    clock.now += 2
    window.note(200)
    assert window.rate() == pytest.approx(100.0)
    clock.now += 96  # long after: only what the last 60 s hold counts
    assert window.rate() is None  # idle: the window is empty


def test_a_long_run_is_divided_by_the_window_not_by_its_length() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.note(0)
    for _ in range(120):
        clock.now += 1
        window.note(50)
    assert window.rate() == pytest.approx(50.0)


def test_a_new_run_after_idle_starts_afresh() -> None:
    clock = Clock()
    # a search, a few collected, ten idle minutes, a search, a batch 4 s later
    window = clock.notes(RateWindow(clock=clock), (0, 0), (1, 10), (600, 0), (4, 400))
    assert window.rate() == pytest.approx(100.0)  # 400 in 4 s, not 400 over the whole window


def test_the_first_batch_right_after_the_search_gives_no_absurd_rate() -> None:
    clock = Clock()
    window = clock.notes(RateWindow(clock=clock), (0, 0), (0.01, 200))
    assert window.rate() == pytest.approx(200.0)  # divided by at least a second


def test_time_left_is_the_messages_left_at_the_rate_rounded_up() -> None:
    assert time_left(1234, 350.0) == 4
    assert time_left(700, 350.0) == 2
    assert time_left(0, 350.0) is None  # drained
    assert time_left(1234, None) is None  # rate unknown
    assert time_left(None, 350.0) is None


def test_fields_from_a_stored_row_absent_when_unknown_or_stale() -> None:
    now = datetime(2026, 12, 2, 4, 0, tzinfo=timezone.utc)
    fresh = {"remaining": 1234, "rate": 350.123, "measured_at": format_utc(now - timedelta(seconds=1))}
    assert progress_fields(fresh, now) == {"remaining": 1234, "rate": 350.12, "time_left": 4}
    stale = {**fresh, "measured_at": format_utc(now - timedelta(seconds=STALE_SECONDS + 1))}
    assert progress_fields(stale, now) == {"remaining": 1234, "rate": None, "time_left": None}
    drained = {**fresh, "remaining": 0}
    assert progress_fields(drained, now) == {"remaining": 0, "rate": 350.12, "time_left": None}
    idle = {**fresh, "rate": None}
    assert progress_fields(idle, now)["time_left"] is None
    assert progress_fields(None, now) == {"remaining": None, "rate": None, "time_left": None}


def test_text_for_people() -> None:
    assert progress_text({"remaining": 1234, "rate": 350.0, "time_left": 4}) == "1,234 left · 350/s · 4 s left"
    assert progress_text({"remaining": 90, "rate": 2.5, "time_left": 36}) == "90 left · 2.5/s · 36 s left"
    assert progress_text({"remaining": 50000, "rate": 20.0, "time_left": 2500}) == (
        "50,000 left · 20/s · 41 min 40 s left")
    assert progress_text({"remaining": 9000000, "rate": 1000.0, "time_left": 9000}) == (
        "9,000,000 left · 1,000/s · 2 h 30 min left")
    assert progress_text({"remaining": 0, "rate": 0.05, "time_left": None}) == "0 left · 3/min · —"
    assert progress_text({"remaining": 0, "rate": None, "time_left": None}) == "0 left · — · —"
    assert progress_text({"remaining": None, "rate": None, "time_left": None}) == ""


def writes(store: SQLiteStore) -> int:
    return int(store.get_state(WRITES_KEY) or 0)


def test_reports_reach_the_store_in_the_flush_and_stop_when_idle(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteStore(tmp_path / "state.db")
    live = LiveStatus(clock=clock)
    live._store = store  # flushed by hand here, not by the once-a-second thread
    try:
        live.progress("c1", remaining=1000)  # the search found 1000
        live.flush()
        assert {k: live_fields(store, "c1")[k] for k in ("remaining", "rate", "time_left")} == {
            "remaining": 1000, "rate": None, "time_left": None}
        clock.now += 2
        live.progress("c1", remaining=800, collected=200)
        clock.now += 2
        live.progress("c1", remaining=600, collected=200)
        live.flush()  # one write for both reports
        shown = live_fields(store, "c1")
        assert (shown["remaining"], shown["rate"], shown["time_left"]) == (600, 100.0, 6)
        clock.now += 6
        live.progress("c1", remaining=0, collected=600)
        live.flush()
        shown = live_fields(store, "c1")
        assert (shown["remaining"], shown["rate"], shown["time_left"]) == (0, 100.0, None)
        clock.now += 1
        before = writes(store)
        live.flush()  # the rate is still there (decaying): rewritten
        assert writes(store) == before + 1
        clock.now += RATE_WINDOW_SECONDS
        live.flush()  # the window is empty: the rate goes absent, once
        shown = live_fields(store, "c1")
        assert (shown["remaining"], shown["rate"], shown["time_left"]) == (0, None, None)
        before = writes(store)
        live.flush()
        live.progress("c1", remaining=0)  # an idle pass finding nothing: nothing new to write
        live.flush()
        assert writes(store) == before
        assert live_fields(store, "other")["remaining"] is None  # never reported
    finally:
        live._store = None
        store.close()


def test_a_disabled_connection_shows_no_progress_left_from_its_last_pass(tmp_path: Path) -> None:
    """Disabling a connection mid-pass stops its collector; the stored report
    ("3,000 left") must not stay on the page and in the CLI as if current."""
    store = SQLiteStore(tmp_path / "state.db")
    live = LiveStatus(clock=Clock())
    live._store = store
    try:
        live.progress("c1", remaining=3000)
        live.flush()
        assert live_fields(store, "c1")["remaining"] == 3000
        shown = live_fields(store, "c1", collecting=False)
        assert (shown["remaining"], shown["rate"], shown["time_left"]) == (None, None, None)
        assert progress_text(shown) == ""
    finally:
        live._store = None
        store.close()
