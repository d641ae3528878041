"""Which source rows a run judges (SPEC 6, "Window")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from recon_pipeline.model.mapping import Settings


@dataclass(frozen=True, slots=True)
class RunWindow:
    """Rows with `updated_at` in [start, end) are judged; `full_scan` judges every row
    changed before `end` (rows inside the settle period never are)."""

    start: datetime
    end: datetime
    full_scan: bool = False

    def contains(self, moment: datetime | None) -> bool:
        if moment is None:
            return self.full_scan
        if moment.tzinfo is None:  # a `timestamp without time zone` value: UTC
            moment = moment.replace(tzinfo=UTC)
        if self.full_scan:
            return moment < self.end
        return self.start <= moment < self.end


class WindowError(ValueError):
    """An explicit window that cannot be judged."""


def as_utc(moment: datetime | str) -> datetime:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def compute_window(
    settings: Settings,
    now: datetime,
    *,
    range_start: datetime | str | None = None,
    range_end: datetime | str | None = None,
    lookback_hours: float | None = None,
    explicit: bool = False,
    full_scan: bool = False,
) -> RunWindow:
    """`window_end` is the end of the range (never later than now − settle);
    `window_start` the start of the range, or end − lookback when that is earlier.
    `explicit`: judge exactly [range_start, range_end) (no lookback)."""
    settled = as_utc(now) - timedelta(seconds=settings.settle_seconds)
    end = min(as_utc(range_end), settled) if range_end is not None else settled
    lookback = timedelta(hours=settings.lookback_hours if lookback_hours is None
                         else lookback_hours)
    if explicit:
        if range_start is None or range_end is None:
            raise WindowError("an explicit window needs both a start and an end")
        start = as_utc(range_start)
    else:
        start = end - lookback
        if range_start is not None:
            start = min(start, as_utc(range_start))
    if start >= end and not full_scan:
        raise WindowError(
            f"window is empty: start {start.isoformat()} is not before end {end.isoformat()}"
            " (an end inside the settle period is moved back to now - settle_seconds)")
    return RunWindow(start=start, end=end, full_scan=full_scan)
