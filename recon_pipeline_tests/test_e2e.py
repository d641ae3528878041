"""End to end: `dagster dev` on a PostgreSQL-backed instance; a run launched through
Dagster's GraphQL client, its materialization metadata and check results read back
through GraphQL; a backfill of 6 partitions alongside another run, never more than one
run in progress."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.defs.checks import CHECK_NAMES
from recon_pipeline.defs.executor import FORKSERVER_STARTED
from recon_pipeline.defs.partitions import last_complete_hour
from recon_pipeline.local import embedded
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import (
    REPO,
    SEED_NOW,
    WINDOW_END,
    WINDOW_START,
    child_env,
    seed,
    write_dagster_home,
)
from recon_pipeline_tests.graphql_client import (
    BACKFILL,
    BACKFILL_STATUS,
    CHECK,
    CHECK_DESCRIPTIONS,
    MATERIALIZATIONS,
    RUNS,
    TERMINAL,
    GraphQL,
    run_errors,
    run_messages,
    wait_for,
)

pytestmark = pytest.mark.e2e
KEY = {"path": ["reconciliation_report"]}
# One process per run keeps the test fast; the multiprocess executor has its own test.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


@pytest.fixture
def dagster_dev(pg_url: str, mongo_db: Database[Any], dagster_postgres_url: str,
                tmp_path: Path) -> Iterator[GraphQL]:
    port = embedded.free_port()
    env = child_env(DATABASE_URL=pg_url, MONGODB_URL=mongo_url_of(mongo_db),
                    MONGODB_DATABASE=mongo_db.name,
                    **write_dagster_home(tmp_path / "home", dagster_postgres_url))
    log = (tmp_path / "dagster_dev.log").open("wb")
    dagster = str(Path(sys.executable).with_name("dagster"))
    process = subprocess.Popen(
        [dagster, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = GraphQL(port)
    try:
        wait_for("dagster dev to load the code location",
                 lambda: process.poll() is None and client.loaded() or process.poll() is not None,
                 deadline_s=180)
        assert process.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
        yield client
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT lets dagster dev stop its webserver and daemon; the group is killed when
    that takes too long (it can hang on daemon threads)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers: run workers, code server
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def launch(gql: GraphQL, partition: str, run_config: dict[str, Any]) -> str:
    return gql.launch("reconciliation_job", partition, run_config)


def wait_success(gql: GraphQL, run_id: str) -> None:
    status = wait_for(f"run {run_id}",
                      lambda: (s := gql.run_status(run_id)) in TERMINAL and s, deadline_s=240)
    assert status == "SUCCESS", run_errors(gql, run_id)


def entries_of(materialization: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for entry in materialization["metadataEntries"]:
        for field in ("intValue", "floatValue", "text", "boolValue", "mdStr", "table"):
            if field in entry:
                values[entry["label"]] = entry[field]
    return values


def test_ui_run_and_backfill_end_to_end(
    dagster_dev: GraphQL, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig
) -> None:
    gql = dagster_dev
    seeded = seed(pg_engine, mongo_db, config)
    # The job's default executor, as the UI launches it: the code server starts the run
    # worker, the run worker forks the forkserver its parallel steps come from.
    run_config = recon_pipeline.run_config(window_start=WINDOW_START, window_end=WINDOW_END)
    partition = last_complete_hour(SEED_NOW)
    run_id = launch(gql, partition, run_config)
    wait_success(gql, run_id)
    assert FORKSERVER_STARTED[True] in run_messages(gql, run_id)

    [row] = [r for r in reports.recent_reports(pg_engine, 5) if r["run_id"] == run_id]
    materializations = gql(MATERIALIZATIONS, {"key": KEY})["assetOrError"][
        "assetMaterializations"]
    [mine] = [m for m in materializations if m["runId"] == run_id]
    metadata = entries_of(mine)
    assert mine["partition"] == partition
    assert {name: metadata[name] for name in seeded.counts} == {
        name: row[name] for name in seeded.counts}
    assert (metadata["report_id"], metadata["status"], metadata["window_start"]) == (
        str(row["id"]), row["status"], WINDOW_START.isoformat())
    drift = seeded.summary.drift["clients"]
    assert metadata["clients/field_mismatches"] == len(drift.mismatched)  # plotted per entity
    assert {"field_drift", "mismatch_sample"} <= set(metadata)
    assert len(metadata["entities"]["records"]) == 3  # one row per entity
    checks = {}
    described = gql(CHECK_DESCRIPTIONS, {"key": KEY})["assetNodeOrError"][
        "assetChecksOrError"]["checks"]
    assert {c["name"] for c in described} == set(CHECK_NAMES)
    assert all(c["description"] for c in described)  # the UI shows each one's meaning
    for name in CHECK_NAMES:
        executions = gql(CHECK, {"key": KEY, "name": name})["assetCheckExecutions"]
        # Besides its evaluation, a run leaves the planned (partitioned) record SKIPPED:
        # checks are evaluated unpartitioned, one report per run whatever its range.
        [execution] = [e for e in executions if e["runId"] == run_id and e["evaluation"]]
        checks[name] = (execution["evaluation"]["success"], execution["evaluation"]["severity"])
    assert checks == {
        "no_unrepaired_mismatches": (False, "ERROR"),
        "mismatch_rate_below_threshold": (False, "WARN"),
        "outbox_has_no_dead_letters": (row["outbox_dead"] == 0, "WARN"),
        "mongo_reachable": (True, "ERROR"),
        "outbox_backlog_fresh": (True, "WARN"),
        "mismatch_rate_in_usual_range": (True, "WARN"),  # not enough history yet
    }

    # A backfill of 6 partitions and, at the same time, another run: the pool keeps them
    # apart (multi_run(24) packs the 6 partitions into one run covering the range).
    keys = [last_complete_hour(SEED_NOW - timedelta(hours=hours)) for hours in range(5, -1, -1)]
    backfill = gql(BACKFILL, {"params": {"assetSelection": [KEY], "partitionNames": keys,
                                         "title": "e2e backfill",
                                         "runConfigData": IN_PROCESS}})
    backfill_id = backfill["launchPartitionBackfill"]["backfillId"]
    other = launch(gql, partition, {**recon_pipeline.run_config(), **IN_PROCESS})

    def backfill_done() -> dict[str, Any] | None:
        state = gql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        finished = state["status"] != "REQUESTED" and state["runs"] and all(
            r["status"] in TERMINAL for r in state["runs"])
        return state if finished else None

    state = wait_for("the backfill", backfill_done, deadline_s=300, interval_s=1)
    wait_success(gql, other)
    assert (state["status"], state["numPartitions"], len(state["runs"])) == (
        "COMPLETED_SUCCESS", 6, 1)
    tags = {t["key"]: t["value"] for t in state["runs"][0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"],
            tags["dagster/asset_partition_range_end"]) == (keys[0], keys[-1])
    backfill_report = next(r for r in reports.recent_reports(pg_engine, 5)
                           if r["run_id"] == state["runs"][0]["runId"])
    assert backfill_report["partition_key"] == f"{keys[0]}...{keys[-1]}"

    # By id: the hourly schedule runs in this dagster dev too, and at the top of an hour
    # it starts a run of its own.
    ours = [state["runs"][0]["runId"], other]
    runs = gql(RUNS, {"filter": {"runIds": ours}})["runsOrError"]["results"]
    spans = sorted((r["startTime"], r["endTime"]) for r in runs)
    assert len(spans) == 2 and all(r["status"] == "SUCCESS" for r in runs)
    assert spans[0][1] <= spans[1][0], f"runs overlapped: {spans}"
