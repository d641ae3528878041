"""`reconciliation_report` executed in process on an ephemeral instance: the report row,
the materialization metadata and the six checks match the seeded drift exactly."""

import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckSeverity,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    execute_job,
    reconstructable,
)
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.cli.runner import reconciliation_job_def
from recon_pipeline.definitions import defs
from recon_pipeline.defs.ops import KEY_RANGE_CHUNKS_TAG
from recon_pipeline.defs.partitions import last_complete_hour
from recon_pipeline.defs.resources import RunLock
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports, run_lock
from recon_pipeline_tests.dagster_support import (
    SEED_NOW,
    WINDOW_END,
    WINDOW_START,
    mapping_with,
    seed,
    set_step_environment,
    test_resources,
)

PARTITION = last_complete_hour(SEED_NOW)


def execute(pg_url: str, mongo_db: Database[Any], **options: Any) -> ExecuteInProcessResult:
    job = defs.resolve_job_def("reconciliation_job")
    with DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(
            run_config=recon_pipeline.run_config(**options), instance=instance,
            partition_key=PARTITION, resources=test_resources(pg_url, mongo_db),
            raise_on_error=False)


def latest_report(engine: sa.Engine) -> dict[str, Any]:
    [row] = reports.recent_reports(engine, 1)
    return row


def test_run_reports_the_seeded_drift_exactly(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    result = execute(pg_url, mongo_db, window_start=WINDOW_START, window_end=WINDOW_END)
    assert result.success
    row = latest_report(pg_engine)
    assert {name: row[name] for name in seeded.counts} == seeded.counts
    assert (row["status"], row["mongo_available"], row["run_id"], row["partition_key"]) == (
        "needs_attention", True, result.run_id, PARTITION)
    assert (row["window_start"], row["window_end"]) == (WINDOW_START, WINDOW_END)

    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert event.materialization.partition == PARTITION
    assert {name: metadata[name] for name in seeded.counts} == seeded.counts
    assert metadata["report_id"] == str(row["id"])  # text: an id is not a trend
    assert metadata["status"] == "needs_attention"
    assert metadata["window_start"] == WINDOW_START.isoformat()
    assert metadata["window_end"] == WINDOW_END.isoformat()
    assert metadata["mismatch_rate"] == pytest.approx(
        seeded.counts["mismatches_found"] / seeded.counts["records_checked"])
    table = {r.data["entity"]: r.data for r in metadata["entities"].records}
    for name, drift in seeded.summary.drift.items():
        assert (table[name]["records_checked"], table[name]["missing_in_mongo"],
                table[name]["field_mismatches"], table[name]["orphans_in_mongo"],
                table[name]["reported"]) == (drift.rows, len(drift.missing),
                                             len(drift.mismatched), len(drift.orphans),
                                             len(drift.orphans))
    assert f"Reconciliation report {row['id']}: **needs_attention**" in metadata["summary"]

    checks = {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}
    assert checks == {
        "no_unrepaired_mismatches": (False, AssetCheckSeverity.ERROR),  # orphans reported
        "mismatch_rate_below_threshold": (False, AssetCheckSeverity.WARN),  # 20% drift
        "outbox_has_no_dead_letters": (False, AssetCheckSeverity.WARN),  # 3 malformed
        "mongo_reachable": (True, AssetCheckSeverity.ERROR),
        "outbox_backlog_fresh": (True, AssetCheckSeverity.WARN),
        "mismatch_rate_in_usual_range": (True, AssetCheckSeverity.WARN),  # no history yet
    }


def test_a_second_run_finds_only_the_orphans(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    window = {"window_start": WINDOW_START, "window_end": WINDOW_END}
    assert execute(pg_url, mongo_db, **window).success
    assert execute(pg_url, mongo_db, **window).success
    row = latest_report(pg_engine)
    orphans = seeded.counts["orphans_in_mongo"]
    assert (row["mismatches_found"], row["orphans_in_mongo"], row["repaired"],
            row["outbox_attempted"]) == (orphans, orphans, 0, 0)


def test_dry_run_and_entity_selection_write_nothing_to_mongodb(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    drift = seeded.summary.drift["incoming_emails"]
    before = mongo_db.incoming_emails.count_documents({})
    result = execute(pg_url, mongo_db, window_start=WINDOW_START, window_end=WINDOW_END,
                     dry_run=True, entities=["incoming_emails"])
    assert result.success
    row = latest_report(pg_engine)
    assert (row["dry_run"], row["records_checked"], row["repaired"], row["repair_skipped"]) == (
        True, drift.rows, 0, len(drift.missing) + len(drift.mismatched))
    assert mongo_db.incoming_emails.count_documents({}) == before


def test_partition_window_stretches_back_to_lookback(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seed(pg_engine, mongo_db, config)
    assert execute(pg_url, mongo_db, lookback_hours=5).success
    row = latest_report(pg_engine)
    # The partition is the hour before SEED_NOW; 5 hours of lookback reach further back.
    assert (row["window_start"], row["window_end"]) == (SEED_NOW - timedelta(hours=5), SEED_NOW)


def test_unknown_entity_fails_the_run_naming_it(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any]
) -> None:
    result = execute(pg_url, mongo_db, entities=["invoices"])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown entity 'invoices'" in str(failure.step_failure_data.error)
    assert reports.recent_reports(pg_engine, 1) == []


def test_unreachable_mongodb_gives_a_partial_report_after_outbox_and_cleanup(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seed(pg_engine, mongo_db, config)
    resources = test_resources(
        pg_url, mongo_db, mongodb_url="mongodb://u:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=300")
    job = defs.resolve_job_def("reconciliation_job")
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=recon_pipeline.run_config(window_start=WINDOW_START,
                                                 window_end=WINDOW_END),
            instance=instance, partition_key=PARTITION, resources=resources)
    row = latest_report(pg_engine)
    assert (row["status"], row["mongo_available"], row["records_checked"]) == (
        "partial", False, 0)
    assert row["idempotency_keys_deleted"] == 4  # cleanup still ran
    assert row["outbox_attempted"] >= 1 and row["outbox_sent"] == 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["mongo_reachable"] is False
    text = " ".join(str(e.message) for e in result.all_events)
    assert "s3cret" not in text


def test_multiprocess_run_with_several_chunks_reports_the_same_counts(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mapping = mapping_with(tmp_path, chunk_size=10)  # a small data set fans out
    run_config = recon_pipeline.run_config(window_start=WINDOW_START, window_end=WINDOW_END)
    seeded = seed(pg_engine, mongo_db, config, clients=12)
    job = defs.resolve_job_def("reconciliation_job")
    with DagsterInstance.ephemeral() as instance:
        in_process = job.execute_in_process(
            run_config=run_config, instance=instance, partition_key=PARTITION,
            resources=test_resources(pg_url, mongo_db, mapping))
    assert in_process.success
    in_process_row = latest_report(pg_engine)

    seed(pg_engine, mongo_db, config, clients=12)  # the same drift again
    set_step_environment(monkeypatch, pg_url, mongo_db, tmp_path / "home",
                         dagster_postgres_url, mapping)
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(reconciliation_job_def), instance=instance,
            # Key ranges forced: the embedded server would get one chunk per entity.
            tags={"dagster/partition": PARTITION, KEY_RANGE_CHUNKS_TAG: "true"},
            run_config={**run_config,
                        "execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})
        assert result.success
        starts = [e for e in instance.all_logs(result.run_id)
                  if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START]
    row = latest_report(pg_engine)
    pids = {e.step_key: e.dagster_event.pid for e in starts if e.step_key and e.dagster_event}
    chunk_steps = [key for key in pids if "diff_chunk_op[" in key]
    assert len(chunk_steps) > 3  # several chunks per entity
    # The chunks in a process each; the coordinating steps in the run worker (this
    # process, which called execute_job).
    assert len({pids[key] for key in chunk_steps}) == len(chunk_steps)
    assert os.getpid() not in {pids[key] for key in chunk_steps}
    assert {key.rsplit(".", 1)[-1] for key, pid in pids.items() if pid == os.getpid()} == {
        "start_run", "retry_outbox", "plan_chunks_op", "decide_repairs_op", "clean_up_op",
        "write_report"}
    assert {n: row[n] for n in seeded.counts} == {n: in_process_row[n] for n in seeded.counts}
    assert {n: row[n] for n in seeded.counts} == seeded.counts
    assert row["status"] == in_process_row["status"] == "needs_attention"


def test_two_in_process_runs_never_overlap(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    seed(pg_engine, mongo_db, config)
    results: list[bool] = []

    def run() -> None:
        results.append(execute(pg_url, mongo_db, window_start=WINDOW_START,
                               window_end=WINDOW_END).success)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [True, True]
    first, second = sorted(reports.recent_reports(pg_engine, 2), key=lambda r: r["started_at"])
    assert first["finished_at"] <= second["started_at"]


def test_a_run_waits_for_the_lock_and_gives_up_with_a_clear_error(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any]
) -> None:
    resources = test_resources(pg_url, mongo_db)
    resources["run_lock"] = RunLock(postgres=resources["postgres"], wait_seconds=0.5,
                                    poll_seconds=0.1)
    job = defs.resolve_job_def("reconciliation_job")
    other = run_lock.Claimant.this_process("other-run")
    assert run_lock.try_acquire(pg_engine, other, lease_seconds=600) is None
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=recon_pipeline.run_config(), instance=instance, partition_key=PARTITION,
            resources=resources, raise_on_error=False)
    assert not result.success
    errors = [str(e.event_specific_data.error.message)  # type: ignore[union-attr]
              for e in result.all_events if getattr(e.event_specific_data, "error", None)]
    assert any("run lock 'reconciliation' still held by run other-run" in m
               for m in errors), errors
    assert reports.recent_reports(pg_engine, 1) == []  # nothing half-written
    holder = run_lock.current_holder(pg_engine)
    assert holder is not None and holder.run_id == "other-run"  # never taken from it
