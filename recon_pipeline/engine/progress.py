"""Progress of one chunk: the one record the run log, the op's metadata and the CLI render.

The engine reports through a callback and never reads the clock per row: the meter is
told of each batch read (thousands of rows), so watching a scan costs a clock read per
batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

PROGRESS_INTERVAL = 10.0  # seconds between two reports within a chunk
PROGRESS_EXTRA = "recon_progress"  # the log record attribute that carries the record


@dataclass(frozen=True, slots=True)
class ChunkProgress:
    chunk: str
    rows: int  # source rows judged so far (read so far, while the chunk runs)
    total: int | None  # rows the chunk holds: counted, estimated (`estimated`) or unknown
    estimated: bool
    mismatches: int
    seconds: float
    done: bool
    seconds_left: float | None = None  # at the pace since the last report; None: unknown

    @property
    def rate(self) -> float:
        """Rows per second."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """`chunk clients_0: 120,000/~200,000 rows, 40,000 rows/s, 3 mismatches, ~2s left`"""
        total = ("" if self.total is None
                 else f"/{'~' if self.estimated else ''}{self.total:,}")
        if self.done:
            tail = f"done in {self.seconds:.1f}s"
        else:
            left = self.seconds_left
            tail = ("time left unknown" if left is None or self.total is None
                    else f"~{left:.0f}s left")
        return (f"chunk {self.chunk}: {self.rows:,}{total} rows, {self.rate:,.0f} rows/s, "
                f"{self.mismatches:,} mismatches, {tail}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ChunkProgress:
        return cls(**values)


ProgressCallback = Callable[[ChunkProgress], None]


class ProgressMeter:
    """Turns batch counts into `ChunkProgress` reports at most every `interval` seconds,
    plus one at the start and one at the end."""

    __slots__ = ("_clock", "_interval", "_last_rows", "_last", "_report", "_started", "chunk",
                 "estimated", "rows", "total")

    def __init__(self, chunk: str, total: int | None, report: ProgressCallback, *,
                 estimated: bool = False, interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.chunk, self.total, self.estimated = chunk, total, estimated
        self.rows = 0
        self._report, self._interval, self._clock = report, interval, clock
        self._started = self._last = clock()
        self._last_rows: int | None = None  # rows at the last periodic report
        self._emit(0, done=False, now=self._started)

    def read(self, rows: int, mismatches: int) -> None:
        """`rows` more rows read; reports when the interval has passed."""
        self.rows += rows
        now = self._clock()
        if now - self._last >= self._interval:
            self._emit(mismatches, done=False, now=now)
            self._last, self._last_rows = now, self.rows

    def finish(self, rows: int, mismatches: int) -> None:
        """The chunk's final figures: `rows` judged in all."""
        self.rows = rows
        self._emit(mismatches, done=True, now=self._clock())

    def _seconds_left(self, now: float) -> float | None:
        """At the pace since the last periodic report. None at the first: its span holds
        the servers' start-up (a sort before the first document arrives), not the pace."""
        if self.total is None or self._last_rows is None or now <= self._last:
            return None
        pace = (self.rows - self._last_rows) / (now - self._last)
        return max(self.total - self.rows, 0) / pace if pace > 0 else None

    def _emit(self, mismatches: int, *, done: bool, now: float) -> None:
        total = self.rows if done else self.total
        self._report(ChunkProgress(
            self.chunk, self.rows, total, self.estimated and not done, mismatches,
            now - self._started, done, 0.0 if done else self._seconds_left(now)))
