"""The run config of `reconciliation_job` (SPEC 7): one `dagster.Config` class, so the
launchpad shows each key with its description, and the window a run judges."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dagster import Config
from pydantic import Field, ValidationError

from recon_pipeline.engine.window import RunWindow, WindowError, as_utc, compute_window
from recon_pipeline.model.mapping import Settings

ASSET_NAME = "reconciliation_report"


class ReconciliationConfig(Config):  # type: ignore[misc]
    """What one run judges and whether it writes. Every key is optional."""

    lookback_hours: float | None = Field(
        default=None, ge=0,
        description="hours judged before the window end; unset: the mapping's "
        "lookback_hours; 0: exactly the partition (range)")
    dry_run: bool = Field(
        default=False, description="find and record mismatches, write nothing to MongoDB")
    full_scan: bool = Field(
        default=False, description="compare every row and document regardless of time")
    entities: list[str] | None = Field(
        default=None, description="entity names from the mapping (default: all)")
    window_start: str | None = Field(
        default=None, description="ISO 8601; with window_end replaces the partition window "
        "and the lookback")
    window_end: str | None = Field(default=None, description="ISO 8601, exclusive")

    @property
    def explicit_window(self) -> bool:
        return self.window_start is not None or self.window_end is not None

    @property
    def entity_names(self) -> tuple[str, ...] | None:
        return tuple(self.entities) if self.entities else None


def _iso(moment: datetime | str | None, name: str) -> str | None:
    if moment is None:
        return None
    try:
        return as_utc(moment).isoformat()
    except ValueError:
        raise WindowError(f"{name} is not an ISO 8601 datetime: {moment!r}") from None


def reconciliation_config(lookback_hours: float | None = None, dry_run: bool = False,
                          full_scan: bool = False, entities: Iterable[str] | None = None,
                          window_start: datetime | str | None = None,
                          window_end: datetime | str | None = None) -> ReconciliationConfig:
    """A checked config; an explicit window needs both ends (datetimes or ISO strings)."""
    if (window_start is None) != (window_end is None):
        raise WindowError("an explicit window needs both window_start and window_end")
    try:
        return ReconciliationConfig(
            lookback_hours=lookback_hours, dry_run=dry_run, full_scan=full_scan,
            entities=list(entities) if entities else None,
            window_start=_iso(window_start, "window_start"),
            window_end=_iso(window_end, "window_end"))
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        raise WindowError(f"run config '{name}': {first['msg']}") from None


def build_run_config(config: ReconciliationConfig) -> dict[str, Any]:
    # The graph asset maps this one config block onto its first op (a ConfigMapping).
    return {"ops": {ASSET_NAME: {"config": config.model_dump()}}}


def run_window(settings: Settings, now: datetime, config: ReconciliationConfig,
               partition_window: tuple[datetime, datetime] | None) -> RunWindow:
    """An explicit window replaces both the partition range and the lookback; otherwise
    the partition range (stretched back to `lookback_hours`), or the lookback from now."""
    if config.explicit_window:
        return compute_window(settings, now, range_start=config.window_start,
                              range_end=config.window_end, explicit=True,
                              full_scan=config.full_scan)
    start, end = partition_window or (None, None)
    return compute_window(settings, now, range_start=start, range_end=end,
                          lookback_hours=config.lookback_hours, full_scan=config.full_scan)
