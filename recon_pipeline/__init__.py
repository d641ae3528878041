"""recon_pipeline: keep a MongoDB read model consistent with its PostgreSQL source."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any


def run_config(lookback_hours: float | None = None, dry_run: bool = False,
               full_scan: bool = False, entities: Iterable[str] | None = None,
               window_start: datetime | str | None = None,
               window_end: datetime | str | None = None) -> dict[str, Any]:
    """The run config of `reconciliation_job` (SPEC 7). An explicit window (datetimes or
    ISO strings) replaces the partition window and the lookback."""
    # Imported here so `import recon_pipeline` does not load the engine.
    from recon_pipeline.defs.config import build_run_config, reconciliation_config

    return build_run_config(reconciliation_config(
        lookback_hours=lookback_hours, dry_run=dry_run, full_scan=full_scan,
        entities=entities, window_start=window_start, window_end=window_end))
