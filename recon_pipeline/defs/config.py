"""The run config of `reconciliation_job` (SPEC 7): the keys a person types in the
launchpad, and the window a run judges. Plain Python, so `recon_pipeline.run_config`
stays cheap to import."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recon_pipeline.engine.window import RunWindow, WindowError, as_utc, compute_window
from recon_pipeline.model.mapping import Settings

ASSET_NAME = "reconciliation_report"
OPTION_KEYS = ("lookback_hours", "dry_run", "full_scan", "entities", "window_start",
               "window_end")


@dataclass(frozen=True, slots=True)
class RunOptions:
    lookback_hours: float | None = None
    dry_run: bool = False
    full_scan: bool = False
    entities: tuple[str, ...] | None = None
    window_start: str | None = None  # ISO 8601, UTC
    window_end: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunOptions:
        entities = config.get("entities")
        return cls(lookback_hours=config.get("lookback_hours"),
                   dry_run=bool(config.get("dry_run", False)),
                   full_scan=bool(config.get("full_scan", False)),
                   entities=tuple(entities) if entities else None,
                   window_start=config.get("window_start"), window_end=config.get("window_end"))

    @property
    def explicit_window(self) -> bool:
        return self.window_start is not None or self.window_end is not None

    def as_config(self) -> dict[str, Any]:
        return {"lookback_hours": self.lookback_hours, "dry_run": self.dry_run,
                "full_scan": self.full_scan,
                "entities": list(self.entities) if self.entities else None,
                "window_start": self.window_start, "window_end": self.window_end}


def _iso(moment: datetime | str | None, name: str) -> str | None:
    if moment is None:
        return None
    try:
        return as_utc(moment).isoformat()
    except ValueError:
        raise WindowError(f"{name} is not an ISO 8601 datetime: {moment!r}") from None


def run_options(lookback_hours: float | None = None, dry_run: bool = False,
                full_scan: bool = False, entities: Iterable[str] | None = None,
                window_start: datetime | str | None = None,
                window_end: datetime | str | None = None) -> RunOptions:
    """Validated options; an explicit window needs both ends."""
    if lookback_hours is not None and lookback_hours <= 0:
        raise WindowError(f"lookback_hours must be positive, got {lookback_hours}")
    if (window_start is None) != (window_end is None):
        raise WindowError("an explicit window needs both window_start and window_end")
    return RunOptions(lookback_hours=lookback_hours, dry_run=dry_run, full_scan=full_scan,
                      entities=tuple(entities) if entities else None,
                      window_start=_iso(window_start, "window_start"),
                      window_end=_iso(window_end, "window_end"))


def build_run_config(options: RunOptions) -> dict[str, Any]:
    # The graph asset maps this one config block onto its first op (a ConfigMapping).
    return {"ops": {ASSET_NAME: {"config": options.as_config()}}}


def run_window(settings: Settings, now: datetime, options: RunOptions,
               partition_window: tuple[datetime, datetime] | None) -> RunWindow:
    """An explicit window replaces both the partition range and the lookback; otherwise
    the partition range (stretched back to `lookback_hours`), or the lookback from now."""
    if options.explicit_window:
        return compute_window(settings, now, range_start=options.window_start,
                              range_end=options.window_end, explicit=True,
                              full_scan=options.full_scan)
    start, end = partition_window or (None, None)
    return compute_window(settings, now, range_start=start, range_end=end,
                          lookback_hours=options.lookback_hours, full_scan=options.full_scan)
