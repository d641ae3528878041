"""SPEC 6 "Window": end capped at now − settle, start = range start or end − lookback."""

from datetime import UTC, datetime, timedelta

import pytest

from recon_pipeline.engine.window import RunWindow, WindowError, compute_window
from recon_pipeline.model.mapping import Settings

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
SETTINGS = Settings(lookback_hours=48, settle_seconds=60)


def test_default_window_is_lookback_ending_before_the_settle_period() -> None:
    w = compute_window(SETTINGS, NOW)
    assert w.end == NOW - timedelta(seconds=60)
    assert w.start == w.end - timedelta(hours=48)


def test_partition_window_extends_back_by_lookback() -> None:
    start, end = datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC)
    w = compute_window(SETTINGS, NOW, range_start=start, range_end=end)
    assert (w.start, w.end) == (end - timedelta(hours=48), end)
    short = compute_window(SETTINGS, NOW, range_start=start, range_end=end, lookback_hours=0.5)
    assert short.start == start  # the range start is earlier than end − lookback


def test_range_ending_inside_settle_period_is_cut_back() -> None:
    w = compute_window(SETTINGS, NOW, range_start="2026-03-01T11:00:00+00:00",
                       range_end="2026-03-01T12:00:00+00:00", explicit=True)
    assert w.start == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert w.end == datetime(2026, 3, 1, 11, 59, 30, tzinfo=UTC)


def test_explicit_window_uses_no_lookback_and_naive_means_utc() -> None:
    w = compute_window(SETTINGS, NOW, range_start="2026-02-01T00:00:00",
                       range_end="2026-02-02T00:00:00", explicit=True)
    assert (w.start, w.end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))


def test_empty_explicit_window_is_an_error() -> None:
    with pytest.raises(WindowError, match="window is empty"):
        compute_window(SETTINGS, NOW, range_start="2026-02-02T00:00:00",
                       range_end="2026-02-01T00:00:00", explicit=True)


def test_contains_is_half_open_and_full_scan_takes_everything_settled() -> None:
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    w = RunWindow(start, end)
    assert w.contains(start) and not w.contains(end) and not w.contains(None)
    full = RunWindow(start, end, full_scan=True)
    assert full.contains(datetime(2020, 1, 1, tzinfo=UTC)) and full.contains(None)
    assert not full.contains(end)  # inside the settle period: not judged yet


def test_zero_lookback_judges_exactly_the_partition_range() -> None:
    start, end = datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)  # a day
    from_config = compute_window(SETTINGS, NOW, range_start=start, range_end=end,
                                 lookback_hours=0)
    from_settings = compute_window(Settings(lookback_hours=0, settle_seconds=60), NOW,
                                   range_start=start, range_end=end)
    assert (from_config.start, from_config.end) == (from_settings.start, from_settings.end) == (
        start, end)
