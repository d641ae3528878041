"""Hourly partitions (SPEC 3: `RECON_PARTITIONS_START`, `RECON_TIMEZONE`)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from dagster import HourlyPartitionsDefinition

from recon_pipeline.local.environment import DEFAULT_PARTITIONS_START

PARTITION_FORMAT = "%Y-%m-%d-%H:%M"

# Read from the process environment directly: resolving the full Environment would start
# embedded servers just to load the definitions.
hourly_partitions = HourlyPartitionsDefinition(
    start_date=os.environ.get("RECON_PARTITIONS_START") or DEFAULT_PARTITIONS_START,
    timezone=os.environ.get("RECON_TIMEZONE") or "UTC",
    fmt=PARTITION_FORMAT,
)


def last_complete_hour(moment: datetime) -> str:
    """The partition that ends at or before `moment`: the hour [moment - 1h, moment)
    for a tick on the hour."""
    return hourly_partitions.get_partition_key_for_timestamp(
        (moment - timedelta(hours=1)).timestamp())


def partition_covering(end: datetime, now: datetime) -> str:
    """The partition holding the instant before `end`, clamped to the partitions that
    exist (the first one, up to the last complete hour)."""
    first = hourly_partitions.start
    moment = max(min(end, now) - timedelta(microseconds=1), first)
    key = hourly_partitions.get_partition_key_for_timestamp(moment.timestamp())
    return min(key, last_complete_hour(now))  # same format and zone: sorts as time
