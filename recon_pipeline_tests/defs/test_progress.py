"""Chunk progress through the whole job: the run log's lines and the chunk op's metadata."""

import re
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance
from pymongo.database import Database

from recon_pipeline.defs.ops import PROGRESS_INTERVAL_TAG
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline_tests.dagster_support import report_of, run_job, seed

LINE = re.compile(r"^chunk (?P<chunk>\w+): (?P<rows>[\d,]+)(?:/~?(?P<total>[\d,]+))? rows, "
                  r"[\d,]+ rows/s, (?P<mismatches>[\d,]+) mismatches, "
                  r"(?:done in [\d.]+s|~\d+s left|time left unknown)$")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_each_chunk_logs_monotone_progress_ending_with_its_total(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
) -> None:
    seed(pg_engine, mongo_db, config, clients=120)
    with DagsterInstance.ephemeral() as instance:
        # interval 0: a line for every batch read, so a small table shows several lines
        result = run_job(pg_url, mongo_db, full_scan=True, dry_run=True, instance=instance,
                         tags={PROGRESS_INTERVAL_TAG: "0"})
        assert result.success
        lines: dict[str, list[re.Match[str]]] = {}
        for entry in instance.all_logs(result.run_id):
            found = LINE.match(entry.user_message) if entry.dagster_event is None else None
            if found:
                lines.setdefault(found["chunk"], []).append(found)
    report = report_of(pg_engine, result)
    entities = report.details["entities"]
    assert sorted(lines) == sorted(f"{name}_0" for name in entities)
    for chunk, matches in lines.items():
        rows = [_number(m["rows"]) for m in matches]
        mismatches = [_number(m["mismatches"]) for m in matches]
        checked = entities[chunk.removesuffix("_0")]["records_checked"]
        assert len(matches) >= 3, chunk  # start, each batch read, end
        assert rows == sorted(rows) and mismatches == sorted(mismatches), chunk
        assert rows[0] == 0 and "done in" in matches[-1].group(0)
        assert rows[-1] == _number(matches[-1]["total"]) == checked


def test_the_chunk_op_output_carries_rows_rate_mismatches_and_seconds(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
) -> None:
    seed(pg_engine, mongo_db, config)
    result = run_job(pg_url, mongo_db, full_scan=True, dry_run=True)
    entities = report_of(pg_engine, result).details["entities"]
    step = "reconciliation_report.diff_chunk_op["
    outputs = {(event.step_key or "").removeprefix(step).removesuffix("_0]"):
               event.step_output_data.metadata
               for event in result.all_events
               if event.is_successful_output and (event.step_key or "").startswith(step)}
    assert sorted(outputs) == sorted(entities)
    for name, metadata in outputs.items():
        row = entities[name]
        values: dict[str, Any] = {key: entry.value for key, entry in metadata.items()}
        assert set(values) == {"rows", "rows_per_second", "mismatches", "seconds"}
        assert values["rows"] == row["records_checked"] > 0
        assert values["mismatches"] == (row["missing_in_mongo"] + row["field_mismatches"]
                                        + row["orphans_in_mongo"])
        assert values["seconds"] > 0 and values["rows_per_second"] > 0
