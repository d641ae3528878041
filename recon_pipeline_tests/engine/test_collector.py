"""A scan runs with the collector's first threshold raised (engine/collector.py), and the
process's own setting comes back after it, also when blocks overlap."""

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine import extract
from recon_pipeline.engine.collector import SCAN_THRESHOLD, fewer_collections
from recon_pipeline.engine.extract import plan_chunks
from recon_pipeline.engine.run_steps import RunScope, begin_run, safe_diff_chunk
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline_tests.builders import T0, email_row, insert, mirror, window


@pytest.fixture
def default_threshold() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)


def test_a_scan_reads_with_the_threshold_raised_and_restores_it(
        pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig,
        default_threshold: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [email_row(i, f"C{i}", at=T0) for i in (1, 2, 3)]
    insert(pg_engine, schema.incoming_emails, *rows)
    mirror(mongo_db, config, "incoming_emails", rows[0], rows[1],
           {**rows[2], "subject": "stale"})
    seen: list[tuple[int, int, int]] = []
    scan = extract._scan_mismatches

    def watched(*args: Any) -> Iterator[Any]:
        for mismatch in scan(*args):
            seen.append(gc.get_threshold())
            yield mismatch

    monkeypatch.setattr(extract, "_scan_mismatches", watched)
    scope = RunScope("r1", window(full_scan=True), entities=("incoming_emails",))
    report_id = begin_run(pg_engine, scope, T0)
    [chunk] = plan_chunks(pg_engine, config, scope.window, ["incoming_emails"])
    result = safe_diff_chunk(pg_engine, mongo_db, config, report_id, scope.window, chunk, T0)
    assert (result.records_checked, result.field_mismatches) == (3, 1)
    assert seen == [(SCAN_THRESHOLD, 10, 10)]  # the one mismatch, found during the scan
    assert gc.get_threshold() == default_threshold


def test_overlapping_blocks_restore_the_setting_when_the_last_ends(
        default_threshold: tuple[int, int, int]) -> None:
    first = fewer_collections()
    second = fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # ended before the other: still raised
    assert gc.get_threshold() == (SCAN_THRESHOLD, 10, 10)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == default_threshold


def test_a_higher_setting_of_the_process_is_kept(
        default_threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(SCAN_THRESHOLD * 2, 10, 10)
    with fewer_collections():
        assert gc.get_threshold()[0] == SCAN_THRESHOLD * 2
    assert gc.get_threshold() == (SCAN_THRESHOLD * 2, 10, 10)
