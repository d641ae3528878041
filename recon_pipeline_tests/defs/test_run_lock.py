"""The run lock (SPEC 7): the lease itself against PostgreSQL, then whole runs launched
every way at once (CLI process, in process, multiprocess executor), judged by the time
spans of their `reconciliation_reports` rows."""

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, ExecuteInProcessResult, execute_job, reconstructable
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.cli.runner import reconciliation_job_def
from recon_pipeline.definitions import defs
from recon_pipeline.defs.partitions import last_complete_hour
from recon_pipeline.defs.resources import RunLock
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports, run_lock
from recon_pipeline.stores.run_lock import Claimant, Holder, RunLockTimeout
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import (
    SEED_NOW,
    WINDOW_END,
    WINDOW_START,
    Seeded,
    child_env,
    seed,
    set_step_environment,
    start_run_worker,
    test_resources,
    write_dagster_home,
)

PARTITION = last_complete_hour(SEED_NOW)
WINDOW = {"window_start": WINDOW_START, "window_end": WINDOW_END}
CLIENTS = 6  # tiny: the multiprocess executor costs seconds per step, not per row


def far_away(run_id: str) -> Claimant:
    """A holder on another machine: only its lease's expiry can free the lock."""
    return Claimant(run_id, "elsewhere", 4242, None)


def lock_row(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "select run_id, holder, active_steps, failed, expires_at > now() as live "
            "from reconciliation_run_lock")).mappings().one())


# --- the lease --------------------------------------------------------------------------

def test_a_second_run_waits_then_times_out_naming_the_holder_and_gets_it_once_released(
    pg_engine: sa.Engine,
) -> None:
    first, second = Claimant.this_process("run-a"), Claimant.this_process("run-b")
    assert run_lock.try_acquire(pg_engine, first, lease_seconds=600) is None
    waited_for: list[Holder] = []
    with pytest.raises(RunLockTimeout, match="still held by run run-a") as raised:
        run_lock.acquire(pg_engine, second, lease_seconds=600, wait_seconds=0.3,
                         poll_seconds=0.05, on_wait=waited_for.append)
    assert first.label in str(raised.value)
    assert [h.run_id for h in waited_for] == ["run-a"]  # announced once, not every poll
    assert lock_row(pg_engine) == {"run_id": "run-a", "holder": first.label,
                                   "active_steps": 1, "failed": False, "live": True}

    run_lock.release(pg_engine, "run-b")  # not its lock: nothing happens
    assert run_lock.current_holder(pg_engine).run_id == "run-a"  # type: ignore[union-attr]
    run_lock.release(pg_engine, "run-a")
    assert run_lock.current_holder(pg_engine) is None
    run_lock.acquire(pg_engine, second, lease_seconds=600, wait_seconds=5, poll_seconds=0.05,
                     on_wait=waited_for.append)
    assert lock_row(pg_engine)["run_id"] == "run-b" and len(waited_for) == 1


def test_every_step_of_the_holding_run_reenters_and_the_lease_outlives_each_step(
    pg_engine: sa.Engine,
) -> None:
    step = Claimant.this_process("run-a")
    assert run_lock.try_acquire(pg_engine, step, 600) is None
    assert run_lock.try_acquire(pg_engine, step, 600) is None  # a parallel step
    assert lock_row(pg_engine)["active_steps"] == 2
    run_lock.step_done(pg_engine, step, 600)
    run_lock.step_done(pg_engine, step, 600)
    # Between steps: no step runs, the run still holds the lock until its lease ends.
    assert lock_row(pg_engine) == {"run_id": "run-a", "holder": step.label,
                                   "active_steps": 0, "failed": False, "live": True}
    assert run_lock.try_acquire(pg_engine, far_away("run-b"), 600) is not None
    assert run_lock.try_acquire(pg_engine, step, 600) is None  # the next step of run-a
    assert lock_row(pg_engine)["active_steps"] == 1


def test_a_failed_run_frees_the_lock_when_its_last_running_step_ends(
    pg_engine: sa.Engine,
) -> None:
    step = Claimant.this_process("run-a")
    for _ in range(2):
        assert run_lock.try_acquire(pg_engine, step, 600) is None
    run_lock.mark_failed(pg_engine, "run-a")
    run_lock.step_done(pg_engine, step, 600)  # the failed step
    assert lock_row(pg_engine)["run_id"] == "run-a"  # a sibling step is still running
    assert run_lock.try_acquire(pg_engine, far_away("run-b"), 600) is not None
    run_lock.step_done(pg_engine, step, 600)
    assert run_lock.current_holder(pg_engine) is None
    assert run_lock.try_acquire(pg_engine, far_away("run-b"), 600) is None


def test_a_holder_that_stops_refreshing_loses_the_lock_when_its_lease_expires(
    pg_engine: sa.Engine,
) -> None:
    assert run_lock.try_acquire(pg_engine, far_away("lost-machine"), lease_seconds=2) is None
    waited_for: list[Holder] = []
    run_lock.acquire(pg_engine, Claimant.this_process("run-b"), lease_seconds=600,
                     wait_seconds=120, poll_seconds=0.05, on_wait=waited_for.append)
    assert [h.run_id for h in waited_for] == ["lost-machine"]
    assert lock_row(pg_engine) == {"run_id": "run-b",
                                   "holder": Claimant.this_process("x").label,
                                   "active_steps": 1, "failed": False, "live": True}


def test_a_lease_last_refreshed_longer_ago_than_its_length_is_free(
    pg_engine: sa.Engine,
) -> None:
    assert run_lock.try_acquire(pg_engine, far_away("lost-machine"), 600) is None
    assert run_lock.try_acquire(pg_engine, far_away("run-b"), 600) is not None
    with pg_engine.begin() as conn:  # the clock moves past the lease: no refresh came
        conn.execute(sa.text("update reconciliation_run_lock "
                             "set expires_at = now() - interval '1 millisecond'"))
    assert run_lock.try_acquire(pg_engine, far_away("run-b"), 600) is None
    assert lock_row(pg_engine) == {"run_id": "run-b", "holder": "elsewhere:4242",
                                   "active_steps": 1, "failed": False, "live": True}


def test_a_dead_step_among_several_leaves_the_lock_to_its_lease(pg_engine: sa.Engine) -> None:
    """A killed step of a multiprocess run whose sibling may still run: no early release."""
    sibling = Claimant.this_process("run-a")
    assert run_lock.try_acquire(pg_engine, sibling, 600) is None
    killed = Claimant("run-a", sibling.host, 2**22 + 7, sibling.pid_scope)  # no such pid
    assert run_lock.try_acquire(pg_engine, killed, 600) is None
    assert lock_row(pg_engine)["active_steps"] == 2
    holder = run_lock.try_acquire(pg_engine, Claimant.this_process("run-b"), 600)
    assert holder is not None and holder.run_id == "run-a"
    run_lock.step_done(pg_engine, sibling, 600)  # the sibling ends; the dead one never will
    assert run_lock.try_acquire(pg_engine, Claimant.this_process("run-b"), 600) is None


def test_a_database_without_the_lock_table_says_to_run_db_init(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("drop table reconciliation_run_lock"))
    with pytest.raises(run_lock.RunLockMissing, match="table reconciliation_run_lock is "
                       "missing: run `recon-pipeline db init`"):
        run_lock.try_acquire(pg_engine, Claimant.this_process("run-a"), 600)


def test_a_running_step_keeps_its_lease_fresh(pg_engine: sa.Engine) -> None:
    step = Claimant.this_process("run-a")
    assert run_lock.try_acquire(pg_engine, step, lease_seconds=0.4) is None
    first = run_lock.current_holder(pg_engine)
    assert first is not None
    beats: list[datetime] = []
    deadline = time.monotonic() + 120
    with run_lock.keep_alive(pg_engine, step, lease_seconds=0.4):
        while not beats and time.monotonic() < deadline:
            holder = run_lock.current_holder(pg_engine)
            assert holder is not None and holder.run_id == "run-a"
            if holder.expires_at > first.expires_at:
                beats.append(holder.expires_at)
            threading.Event().wait(0.02)
    assert beats, "the lease was never refreshed"
    assert lock_row(pg_engine)["active_steps"] == 1  # refreshing is not re-entering


def test_a_sigkilled_holder_frees_the_lock_and_the_next_run_proceeds(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
) -> None:
    seeded = seed(pg_engine, mongo_db, config, clients=CLIENTS)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from recon_pipeline.stores import run_lock
        from recon_pipeline.stores.postgres import create_engine
        claimant = run_lock.Claimant.this_process("killed-run")
        assert run_lock.try_acquire(create_engine(sys.argv[1]), claimant, 3600) is None
        print("held", flush=True)
        time.sleep(3600)
    """), pg_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert run_lock.current_holder(pg_engine).run_id == "killed-run"  # type: ignore[union-attr]
    finally:
        holder.kill()
        holder.wait()
    # The lease has an hour left; the holder's process is gone, which this host can see.
    result, _ = in_process_run(pg_url, mongo_db, wait_seconds=60)
    assert result.success
    [row] = reports.recent_reports(pg_engine, 5)
    assert row["run_id"] == result.run_id and row["finished_at"] is not None
    assert_first_run(row, seeded)
    assert_consistent(pg_engine, mongo_db, seeded)
    assert run_lock.current_holder(pg_engine) is None


def test_a_waiting_run_logs_whose_run_it_waits_for(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = seed(pg_engine, mongo_db, config, clients=CLIENTS)
    assert run_lock.try_acquire(pg_engine, far_away("holder-run-1"), 3600) is None
    outcome: list[tuple[ExecuteInProcessResult, list[str]]] = []
    for name, value in write_dagster_home(tmp_path / "home", dagster_postgres_url).items():
        monkeypatch.setenv(name, value)
    # A PostgreSQL-backed instance: this thread reads the run's log while the run writes it.
    with DagsterInstance.get() as instance:
        thread = threading.Thread(target=lambda: outcome.append(
            in_process_run(pg_url, mongo_db, wait_seconds=600, instance=instance)))
        thread.start()
        waits: list[str] = []
        deadline = time.monotonic() + 300
        while not waits and thread.is_alive() and time.monotonic() < deadline:
            waits = [entry.user_message for run in instance.get_runs(limit=3)
                     for entry in instance.all_logs(run.run_id)
                     if "held by run holder-run-1" in entry.user_message]
            threading.Event().wait(0.2)
        assert run_lock.current_holder(pg_engine).run_id == "holder-run-1"  # type: ignore[union-attr]
        run_lock.release(pg_engine, "holder-run-1")  # the holder's run ends
        thread.join(timeout=600)
    [(result, messages)] = outcome
    assert result.success
    assert waits == [m for m in messages if "waits for the run lock" in m]  # said once
    assert len(waits) == 1 and waits[0].startswith(
        f"run {result.run_id} waits for the run lock, held by run holder-run-1 "
        "(elsewhere:4242, holding since "), waits
    [row] = reports.recent_reports(pg_engine, 5)
    assert_first_run(row, seeded)
    assert_consistent(pg_engine, mongo_db, seeded)
    assert run_lock.current_holder(pg_engine) is None


def test_a_failed_in_process_run_frees_the_lock(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
) -> None:
    result, _ = in_process_run(pg_url, mongo_db, wait_seconds=60, entities=["invoices"])
    assert not result.success
    assert reports.recent_reports(pg_engine, 1) == []
    assert run_lock.current_holder(pg_engine) is None
    assert mongo_db.list_collection_names() == []


# --- whole runs launched every way at once -----------------------------------------------

def in_process_run(pg_url: str, mongo_db: Database[Any], *, wait_seconds: float,
                   instance: DagsterInstance | None = None,
                   **options: Any) -> tuple[ExecuteInProcessResult, list[str]]:
    resources = test_resources(pg_url, mongo_db)
    resources["run_lock"] = RunLock(postgres=resources["postgres"], wait_seconds=wait_seconds,
                                    poll_seconds=0.1)
    job = defs.resolve_job_def("reconciliation_job")
    with nullcontext(instance) if instance else DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=recon_pipeline.run_config(**{**WINDOW, **options}), instance=instance,
            partition_key=PARTITION, resources=resources, raise_on_error=False)
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, messages


def start_cli_run(pg_url: str, mongo_db: Database[Any]) -> subprocess.Popen[str]:
    """`recon-pipeline run` in its own process, as an operator starts it."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "recon-pipeline"), "run",
         "--start", WINDOW_START.isoformat(), "--end", WINDOW_END.isoformat(), "--json"],
        env=child_env(DATABASE_URL=pg_url, MONGODB_URL=mongo_url_of(mongo_db),
                      MONGODB_DATABASE=mongo_db.name),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def multiprocess_run(pg_url: str, mongo_db: Database[Any], dagster_postgres_url: str,
                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                     success: bool = True, **options: Any) -> str:
    """The job as the daemon runs it: the multiprocess executor, a step per process."""
    set_step_environment(monkeypatch, pg_url, mongo_db, tmp_path / "home",
                         dagster_postgres_url)
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(reconciliation_job_def), instance=instance,
            tags={"dagster/partition": PARTITION},
            run_config={**recon_pipeline.run_config(**{**WINDOW, **options}),
                        "execution": {"config": {"multiprocess": {"max_concurrent": 4}}}})
        assert result.success is success
        return result.run_id


def test_a_failed_multiprocess_run_frees_the_lock(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    multiprocess_run(pg_url, mongo_db, dagster_postgres_url, tmp_path, monkeypatch,
                     success=False, entities=["invoices"])
    assert reports.recent_reports(pg_engine, 1) == []
    assert run_lock.current_holder(pg_engine) is None  # freed by the step, not by expiry
    assert mongo_db.list_collection_names() == []


def test_reading_a_finished_runs_outputs_does_not_take_the_lock(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`with execute_job(...) as result` sets the job's resources up again in the calling
    process, to load outputs, after the run: that is no step, and must not hold the lock
    for a lease (the next run would wait two minutes for nothing)."""
    seed(pg_engine, mongo_db, config, clients=CLIENTS)
    set_step_environment(monkeypatch, pg_url, mongo_db, tmp_path / "home",
                         dagster_postgres_url)
    with DagsterInstance.get() as instance, execute_job(
            reconstructable(reconciliation_job_def), instance=instance,
            tags={"dagster/partition": PARTITION},
            run_config=recon_pipeline.run_config(**WINDOW)) as result:
        assert result.success
        ticket = result.output_for_node("reconciliation_report.start_run")
        assert ticket.run_id == result.run_id
    assert run_lock.current_holder(pg_engine) is None


def assert_one_at_a_time(rows: list[dict[str, Any]], run_ids: set[str]) -> None:
    assert {r["run_id"] for r in rows} == run_ids
    assert all(r["finished_at"] is not None for r in rows)
    spans = sorted((r["started_at"], r["finished_at"]) for r in rows)
    for (_, finished), (next_started, _) in zip(spans, spans[1:], strict=False):
        assert finished <= next_started, spans


def assert_first_run(row: dict[str, Any], seeded: Seeded) -> None:
    assert {name: row[name] for name in seeded.counts} == seeded.counts
    assert row["status"] == "needs_attention"


def assert_later_run(row: dict[str, Any], seeded: Seeded) -> None:
    """After the first run only the orphans are left, reported again."""
    orphans = seeded.counts["orphans_in_mongo"]
    assert (row["mismatches_found"], row["orphans_in_mongo"], row["repaired"],
            row["outbox_attempted"], row["status"]) == (orphans, orphans, 0, 0,
                                                         "needs_attention")


def assert_consistent(pg_engine: sa.Engine, mongo_db: Database[Any], seeded: Seeded) -> None:
    """MongoDB holds every source row plus the seeded orphans (reported, never deleted)."""
    with pg_engine.connect() as conn:
        clients = conn.execute(sa.text("select count(*) from clients")).scalar_one()
        emails = conn.execute(sa.text("select count(*) from incoming_emails")).scalar_one()
        outbox = dict(conn.execute(sa.text(
            "select status, count(*) from outbox_messages group by status")).all())
    drift = seeded.summary.drift
    assert mongo_db.clients.count_documents({}) == clients + len(drift["clients"].orphans)
    assert mongo_db.incoming_emails.count_documents({}) == (
        emails + len(drift["incoming_emails"].orphans))
    assert outbox == {"sent": 3, "dead": 3}


def once_a_run_holds_the_lock(pg_engine: sa.Engine,
                              *starts: Callable[[], None]) -> threading.Thread:
    """Start the other runs as soon as one run (the multiprocess one) holds the lock: the
    case where a lock held only by the first step let them in mid-run."""
    def start() -> None:
        for _ in range(12000):  # a deadline of minutes: the run's first step process starts
            if run_lock.current_holder(pg_engine) is not None:
                break
            threading.Event().wait(0.05)
        for run in starts:
            run()

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_a_multiprocess_run_and_a_cli_run_started_at_once_never_overlap(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = seed(pg_engine, mongo_db, config, clients=CLIENTS)
    cli: list[subprocess.Popen[str]] = []
    launcher = once_a_run_holds_the_lock(
        pg_engine, lambda: cli.append(start_cli_run(pg_url, mongo_db)))
    try:
        multiprocess_id = multiprocess_run(pg_url, mongo_db, dagster_postgres_url, tmp_path,
                                           monkeypatch)
    finally:
        launcher.join(timeout=600)
    [process] = cli
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err  # needs_attention: the orphans are only reported
    assert f"waits for the run lock, held by run {multiprocess_id}" in err, err
    cli_report = json.loads(out)
    rows = sorted(reports.recent_reports(pg_engine, 5), key=lambda r: r["started_at"])
    assert_one_at_a_time(rows, {multiprocess_id, cli_report["run_id"]})
    assert rows[0]["run_id"] == multiprocess_id
    assert_first_run(rows[0], seeded)
    assert_later_run(rows[1], seeded)
    assert_consistent(pg_engine, mongo_db, seeded)
    assert run_lock.current_holder(pg_engine) is None


def test_three_runs_started_at_once_run_one_at_a_time_and_each_completes(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    dagster_postgres_url: str, tmp_path: Path,
) -> None:
    seeded = seed(pg_engine, mongo_db, config, clients=CLIENTS)
    cli: list[subprocess.Popen[str]] = []
    in_process: list[tuple[ExecuteInProcessResult, list[str]]] = []
    launcher = once_a_run_holds_the_lock(
        pg_engine, lambda: cli.append(start_cli_run(pg_url, mongo_db)),
        lambda: in_process.append(in_process_run(pg_url, mongo_db, wait_seconds=600)))
    # The multiprocess run in a run worker of its own, as the daemon starts it: its
    # coordinating steps run in that process, and Dagster reconfigures `logging` as it sets
    # up each of them, which must not meet the in-process run logging on a thread here.
    worker = start_run_worker(pg_url, mongo_db, dagster_postgres_url, tmp_path / "home")
    try:
        worker_out, worker_err = worker.communicate(timeout=600)
    finally:
        launcher.join(timeout=600)
    assert worker.returncode == 0, worker_err[-2000:]
    multiprocess_id, outcome = worker_out.splitlines()[-2].split()
    assert outcome == "success"
    [process] = cli
    out, err = process.communicate(timeout=600)
    assert process.returncode == 1, err
    [(result, messages)] = in_process
    assert result.success
    # It started while the multiprocess run held the lock, and said so.
    assert any(f"waits for the run lock, held by run {multiprocess_id}" in m
               for m in messages), messages
    rows = sorted(reports.recent_reports(pg_engine, 5), key=lambda r: r["started_at"])
    assert_one_at_a_time(rows, {multiprocess_id, result.run_id, json.loads(out)["run_id"]})
    assert rows[0]["run_id"] == multiprocess_id
    assert_first_run(rows[0], seeded)
    for row in rows[1:]:
        assert_later_run(row, seeded)
    assert_consistent(pg_engine, mongo_db, seeded)
    assert run_lock.current_holder(pg_engine) is None
