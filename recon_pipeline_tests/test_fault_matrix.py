"""The fault matrix (issue 10), on the real servers of the suite: MongoDB stopped inside a
phase, `failCommand` faults, PostgreSQL restarted between phases. Each case runs the whole
`reconciliation_job` over seeded demo drift, then asserts both databases: no outbox
message lost (each ends `sent`, or still due), at most the right mismatches `failed`, no
wrong repair, and the next run converges (MongoDB equals the projection of every source
row; only the seeded orphans remain, reported).

A run is held inside a phase by a `blockConnection` fail point aimed at its client (the
server's command counters tell when it is there) or by a table lock; then the fault is
applied while it is there. Figures go to stdout (`-s`) for the README's table.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import ExecuteInProcessResult
from pymongo.database import Database

from recon_pipeline.local.demo_data import row_payload
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports
from recon_pipeline_tests import faults
from recon_pipeline_tests.conftest import ServerUrls
from recon_pipeline_tests.dagster_support import (
    Seeded,
    mapping_with,
    run_job,
    seed,
    start_cli_run,
    step_errors,
)
from recon_pipeline_tests.read_model import (
    SECRET,
    assert_converged,
    leaked_secrets,
    read_model_differences,
    with_secret,
)

APP = "recon-fault-matrix"
RUN_SECONDS = 300


@contextmanager
def running(job: Callable[[], ExecuteInProcessResult]) -> Iterator[Future[ExecuteInProcessResult]]:
    """The job on a thread, so the test can act while it is inside a phase."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="matrix-run") as pool:
        yield pool.submit(job)


def messages(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(sa.text(
            "select id, aggregate_type, status, attempts, last_error from outbox_messages"
        )).mappings()}


def mismatches(engine: sa.Engine, report_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "select entity, record_key, kind, repair_status, repair_error "
            "from reconciliation_mismatches where report_id = :r order by id"),
            {"r": report_id}).mappings()]


def report_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    return sorted(reports.recent_reports(engine, 100), key=lambda r: r["id"])


def queue_client_upserts(engine: sa.Engine) -> list[int]:
    """What an application's outbox holds after writing every client: one `upsert` per
    row, carrying the row image."""
    with engine.begin() as conn:
        rows = conn.execute(sa.text("select * from clients order by client_ref")).mappings()
        return list(conn.execute(sa.text(
            "insert into outbox_messages (aggregate_type, aggregate_id, operation, payload) "
            "select 'clients', r->>'client_ref', 'upsert', r "
            "from jsonb_array_elements(cast(:rows as jsonb)) r returning id"),
            {"rows": _json([row_payload(dict(r)) for r in rows])}).scalars())


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def assert_no_message_lost(engine: sa.Engine, before: dict[int, dict[str, Any]],
                           malformed: set[int]) -> None:
    """Every well-formed message ended `sent` or is still due (never dead); malformed
    ones are dead with a reason."""
    for message_id, message in messages(engine).items():
        if message_id in malformed:
            assert message["status"] == "dead", message
            assert message["last_error"].startswith("invalid payload:"), message
        else:
            assert message["status"] in ("sent", "pending", "failed"), message
            assert message["attempts"] <= before[message_id]["attempts"] + 1, message


def malformed_ids(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:  # the demo's three: unknown type, bad operation, array
        return set(conn.execute(sa.text(
            "select id from outbox_messages where aggregate_id = 'X1'")).scalars())


def print_figures(case: str, engine: sa.Engine, db: Database[Any],
                  results: list[ExecuteInProcessResult], output: str = "",
                  **figures: Any) -> None:
    """The case's line of the README's table; no secret in anything the runs left (nor
    in a CLI run's `output`)."""
    errors = [error for result in results for error in step_errors(result)]
    leaks = leaked_secrets(engine, db, output, *errors)
    print(f"\nMATRIX {case}: " + " ".join(f"{k}={v}" for k, v in figures.items())
          + f" leaked_secrets={leaks}")
    assert leaks == 0


def entity_errors(report: dict[str, Any]) -> dict[str, list[str]]:
    return {name: row["errors"] for name, row in report["details"]["entities"].items()
            if row["errors"]}


# --- MongoDB stopped inside a phase ----------------------------------------------------------


@pytest.fixture
def secret_url(pg_url: str) -> str:
    """The run's PostgreSQL URL with a password in it (ignored by trust auth)."""
    return with_secret(pg_url)


@pytest.fixture
def seeded(servers: ServerUrls, pg_engine: sa.Engine, mongo_db: Database[Any],
           config: ReconConfig) -> Iterator[Seeded]:
    faults.require_owned(servers, "mongodb")
    try:
        yield seed(pg_engine, mongo_db, config)
    finally:
        faults.ensure_mongodb_running(servers)


def test_mongodb_stopped_mid_outbox_loses_no_message_and_the_next_run_converges(
    servers: ServerUrls, secret_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    seeded: Seeded, tmp_path: Path,
) -> None:
    """Batches of 10: the first is written, the second is frozen in its MongoDB write and
    the server stopped under it; extraction is held (a lock on `clients`) until MongoDB is
    back, so the rest of the run works on a live server."""
    queued = queue_client_upserts(pg_engine)
    before, malformed = messages(pg_engine), malformed_ids(pg_engine)
    mapping = mapping_with(tmp_path, {"batch_size: 500": "batch_size: 10"})
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    updates = faults.command_count(servers.mongodb_url, "update")
    with faults.frozen(servers.mongodb_url, APP, "update", skip=2), running(
            lambda: run_job(secret_url, mongo_db, mongodb_url=url, mapping_path=mapping)) as run:
        # Batch 1 holds the demo's messages and 4 clients: two writes; batch 2 is frozen.
        faults.wait_for_command(servers.mongodb_url, "update", updates + 3, "outbox batch 2")
        with faults.table_locked(pg_engine, "clients"):
            faults.stop_mongodb(servers)
            faults.wait_for_outbox_idle(pg_engine)
            faults.start_mongodb(servers)
        first = run.result(timeout=RUN_SECONDS)
    after_first = messages(pg_engine)
    batch_one = sorted(before)[:10]
    assert {i: after_first[i]["status"] for i in batch_one} == {
        i: "dead" if i in malformed else "sent" for i in batch_one}
    # Still due, whatever the status says (an outage may note its error on a message).
    untouched = {i: (m["status"] in ("pending", "failed"), m["attempts"])
                 for i, m in after_first.items() if i not in batch_one}
    assert first.success, step_errors(first)
    [report] = report_rows(pg_engine)
    assert report["status"] != "failed" and report["mongo_available"] is True

    second = run_job(secret_url, mongo_db, mongodb_url=url, mapping_path=mapping)
    assert second.success, step_errors(second)
    assert_no_message_lost(pg_engine, before, malformed)
    assert_converged(pg_engine, mongo_db, seeded.summary)
    final = messages(pg_engine)
    print_figures("mongodb-stopped-mid-outbox", pg_engine, mongo_db, [first, second],
                  runs=2, messages=len(before),
                  queued=len(queued), sent=sum(m["status"] == "sent" for m in final.values()),
                  still_due=sum(m["status"] in ("pending", "failed") for m in final.values()),
                  dead=sum(m["status"] == "dead" for m in final.values()),
                  lost=0, wrong_repairs=len(read_model_differences(pg_engine, mongo_db).older))
    # SPEC 6: an outage charges no attempt (pending branch i10faults).
    assert untouched == {i: (True, before[i]["attempts"]) for i in untouched}


def test_mongodb_stopped_mid_extraction_fails_only_that_entity_and_the_next_run_converges(
    servers: ServerUrls, secret_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    seeded: Seeded,
) -> None:
    """The first extraction read (the `clients` chunk) is frozen and the server stopped
    under it, then started again at once: that chunk cannot be compared (the run is
    `partial`); chunks that met the server down or restarting fail the same way, the
    others are judged and repaired as usual."""
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    finds = faults.command_count(servers.mongodb_url, "query")
    with faults.frozen(servers.mongodb_url, APP, "find", skip=0), running(
            lambda: run_job(secret_url, mongo_db, mongodb_url=url)) as run:
        faults.wait_for_command(servers.mongodb_url, "query", finds + 1, "extraction")
        faults.stop_mongodb(servers)
        faults.start_mongodb(servers)
        first = run.result(timeout=RUN_SECONDS)
    assert first.success, step_errors(first)
    [report] = report_rows(pg_engine)
    errors = entity_errors(report)
    assert report["status"] == "partial" and "clients" in errors, report["details"]
    drift = seeded.summary.drift
    for name, row in report["details"]["entities"].items():
        if name in errors:  # not compared: nothing recorded, nothing repaired
            assert (row["missing_in_mongo"], row["field_mismatches"], row["repaired"]) == (
                0, 0, 0)
        else:
            assert (row["records_checked"], row["repaired"], row["repair_failed"]) == (
                drift[name].rows, len(drift[name].missing) + len(drift[name].mismatched), 0)
    assert all(m["repair_status"] != "failed" for m in mismatches(pg_engine, report["id"]))

    second = run_job(secret_url, mongo_db, mongodb_url=url)
    assert second.success, step_errors(second)
    assert report_rows(pg_engine)[-1]["status"] == "needs_attention"  # orphans, dead letters
    assert_converged(pg_engine, mongo_db, seeded.summary)
    print_figures("mongodb-stopped-mid-extraction", pg_engine, mongo_db, [first, second],
                  runs=2,
                  rows=sum(d.rows for d in drift.values()),
                  entities_not_compared=sorted(errors), lost=0, wrong_repairs=0)


def test_mongodb_stopped_mid_repair_fails_only_the_batch_in_flight_and_the_next_run_converges(
    servers: ServerUrls, secret_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    seeded: Seeded,
) -> None:
    """The outbox write and the `clients` repair pass; the `creditor_debts` repair write
    is frozen and the server stopped under it. SPEC 6: those mismatches are `failed` with
    the error, repair ends, the run cleans up and reports `partial`."""
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    updates = faults.command_count(servers.mongodb_url, "update")
    with faults.frozen(servers.mongodb_url, APP, "update", skip=2), running(
            lambda: run_job(secret_url, mongo_db, mongodb_url=url)) as run:
        faults.wait_for_command(servers.mongodb_url, "update", updates + 3, "repair write")
        faults.stop_mongodb(servers)
        faults.start_mongodb(servers)
        first = run.result(timeout=RUN_SECONDS)
    [report] = report_rows(pg_engine)
    rows = mismatches(pg_engine, report["id"])
    drift = seeded.summary.drift
    by_entity = {name: sorted({m["repair_status"] for m in rows
                               if m["entity"] == name and m["kind"] != "orphan_in_mongo"})
                 for name in drift}
    # No wrong repair, whatever the outcome: every `repaired` mismatch holds in MongoDB.
    wrong = read_model_differences(pg_engine, mongo_db).wrong
    repaired_keys = {(m["entity"], m["record_key"]) for m in rows
                     if m["repair_status"] == "repaired"}
    assert not [w for w in wrong if tuple(w.split(":")[0].split(" ")) in repaired_keys]
    assert by_entity["clients"] == ["repaired"]
    assert "repaired" not in by_entity["creditor_debts"]

    second = run_job(secret_url, mongo_db, mongodb_url=url)
    assert second.success, step_errors(second)
    assert_converged(pg_engine, mongo_db, seeded.summary)
    print_figures("mongodb-stopped-mid-repair", pg_engine, mongo_db, [first, second],
                  runs=2, mismatches=len(rows), run1_status=report["status"],
                  run1_failed=sum(m["repair_status"] == "failed" for m in rows), lost=0,
                  wrong_repairs=0)
    # SPEC 6 (pending branch i10faults): the run completes, `partial`, the mismatches in
    # flight `failed` with the error, cleanup done.
    assert first.success, step_errors(first)
    assert report["status"] == "partial", report["status"]
    assert by_entity["creditor_debts"] == ["failed"]
    assert all(m["repair_error"] for m in rows if m["repair_status"] == "failed")
    assert report["idempotency_keys_deleted"] == 4


# --- failCommand faults on run 1, run 2 converges -------------------------------------------

FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "update-error": ("update", {"errorCode": 2}),
    "update-write-concern": ("update", {"writeConcernError": faults.WRITE_CONCERN}),
    "insert-error": ("insert", {"errorCode": 2}),
    "find-error": ("find", {"errorCode": 2}),
}
SOAK_FAULTS = {"insert-error"}  # the pipeline writes through upserts: it never inserts


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.soak) if case in SOAK_FAULTS else case
    for case in FAULTS])
def test_a_fail_point_on_run_one_leaves_nothing_lost_and_run_two_converges(
    case: str, servers: ServerUrls, secret_url: str, pg_engine: sa.Engine,
    mongo_db: Database[Any], seeded: Seeded,
) -> None:
    """Every `command` of the run fails for the whole first run (outbox, extraction and
    repair alike); the second run, fault gone, converges."""
    command, data = FAULTS[case]
    before, malformed = messages(pg_engine), malformed_ids(pg_engine)
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    with faults.fail_point(servers.mongodb_url, APP, "alwaysOn", failCommands=[command],
                           **data):
        first = run_job(secret_url, mongo_db, mongodb_url=url)
    [report] = report_rows(pg_engine)
    rows = mismatches(pg_engine, report["id"])
    statuses = sorted({m["repair_status"] for m in rows if m["kind"] != "orphan_in_mongo"})
    assert_no_message_lost(pg_engine, before, malformed)
    differences = read_model_differences(pg_engine, mongo_db)
    repaired = {(m["entity"], m["record_key"]) for m in rows if m["repair_status"] == "repaired"}
    assert not [w for w in differences.wrong if tuple(w.split(":")[0].split(" ")) in repaired]
    first_status = report["status"]

    second = run_job(secret_url, mongo_db, mongodb_url=url)
    assert second.success, step_errors(second)
    assert_no_message_lost(pg_engine, before, malformed)
    assert_converged(pg_engine, mongo_db, seeded.summary)
    final = messages(pg_engine)
    print_figures(f"failpoint-{case}", pg_engine, mongo_db, [first, second],
                  runs=2, messages=len(final),
                  mismatches=len(rows), run1_status=first_status,
                  run1_repair_statuses="/".join(statuses) or "-",
                  sent=sum(m["status"] == "sent" for m in final.values()),
                  still_due=sum(m["status"] in ("pending", "failed") for m in final.values()),
                  lost=0, wrong_repairs=0)

    if command == "find":  # nothing could be compared; the outbox (blind upserts) worked
        assert (first_status, sorted(entity_errors(report))) == (
            "partial", sorted(seeded.summary.drift))
        assert rows == []
    elif command == "insert":  # the pipeline writes through `update` (upserts) only
        assert first.success, step_errors(first)
        assert {name: report[name] for name in seeded.counts} == seeded.counts
    else:  # SPEC 6 (pending branch i10faults for the plain error): failed, not aborted
        assert first.success, step_errors(first)
        assert first_status == "needs_attention"
        assert "repaired" not in statuses and "failed" in statuses
        assert all(m["repair_error"] for m in rows if m["repair_status"] == "failed")
        assert report["idempotency_keys_deleted"] == 4  # cleanup still ran


# --- PostgreSQL restarted between phases ----------------------------------------------------

PHASE_GATES = {  # phase the run is held before -> (table locked, statement it waits in)
    "extraction": ("clients", "%clients%"),
    "cleanup": ("idempotency_keys", "%idempotency_keys%"),
}


@pytest.mark.parametrize("phase", [
    "extraction", pytest.param("cleanup", marks=pytest.mark.soak)])
def test_postgres_restarted_between_phases_fails_cleanly_and_the_next_run_converges(
    phase: str, servers: ServerUrls, secret_url: str, pg_engine: sa.Engine,
    mongo_db: Database[Any], seeded: Seeded,
) -> None:
    """`recon-pipeline run` is held at its first statement of `phase` (a table lock) and
    PostgreSQL restarted under it: the run fails naming the lost connection, its report
    stays `failed`, what the completed phases committed stays, the held phase wrote
    nothing. The run is a process of its own, as cron starts it: when it exits, its run
    lock has a holder that is visibly gone."""
    faults.require_owned(servers, "postgres")
    table, statement = PHASE_GATES[phase]
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    process = start_cli_run(secret_url, url, mongo_db.name)
    try:
        with faults.table_locked(pg_engine, table):
            faults.wait_for_lock_wait(pg_engine, statement, f"the run to reach {phase}")
            faults.restart_postgres(servers)
        out, err = (b.decode(errors="replace") for b in process.communicate(
            timeout=RUN_SECONDS))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == 1, err
    assert "lost the connection to PostgreSQL at postgresql+psycopg://" in err, err
    assert "terminating connection due to administrator command" in err, err
    [report] = report_rows(pg_engine)
    rows = mismatches(pg_engine, report["id"])
    final_messages = messages(pg_engine)
    with pg_engine.connect() as conn:
        keys = conn.execute(sa.text("select count(*) from idempotency_keys")).scalar_one()
    assert report["status"] == "failed" and report["finished_at"] is None
    # The outbox phase had committed: its deliveries stay delivered, dead letters dead.
    assert sorted(m["status"] for m in final_messages.values()) == ["dead"] * 3 + ["sent"] * 3
    assert keys == 6  # the cleanup never committed half a batch
    if phase == "extraction":
        assert rows == []
    else:  # repair had committed every outcome
        assert sorted({m["repair_status"] for m in rows}) == ["repaired", "reported"]
    second = run_job(secret_url, mongo_db, mongodb_url=url)
    assert second.success, step_errors(second)
    assert report_rows(pg_engine)[-1]["idempotency_keys_deleted"] == 4
    assert_converged(pg_engine, mongo_db, seeded.summary)
    error = next((line for line in err.splitlines()
                  if "lost the connection to PostgreSQL" in line), "")
    print_figures(f"postgres-restarted-before-{phase}", pg_engine, mongo_db, [second],
                  out + err, runs=2, messages=len(final_messages), mismatches=len(rows),
                  run1_status=report["status"], lost=0, wrong_repairs=0,
                  error=error.strip()[:100])
    # SPEC 6 (pending branch i10faults): a failed run keeps its completed phases' figures.
    assert (report["outbox_sent"], report["outbox_dead"]) == (3, 3)


# --- an outage across runs ------------------------------------------------------------------


@pytest.mark.soak
def test_five_runs_while_mongodb_is_down_charge_nothing_and_recovery_delivers_all(
    servers: ServerUrls, secret_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
    seeded: Seeded, tmp_path: Path,
) -> None:
    """SPEC 6 (pending branch i10faults): an outage of any length dead-letters nothing
    and charges no attempt; backoff still spaces the retries (1 s here)."""
    with pg_engine.begin() as conn:  # only deliverable messages: nothing may go dead
        conn.execute(sa.text("delete from outbox_messages where aggregate_id = 'X1'"))
    queue_client_upserts(pg_engine)
    before = messages(pg_engine)
    mapping = mapping_with(tmp_path, {"backoff_base_seconds: 60": "backoff_base_seconds: 1",
                                      "backoff_max_seconds: 3600": "backoff_max_seconds: 1"})
    url = faults.job_mongodb_url(servers.mongodb_url, APP)
    # Credentials in the URL too: an outage's errors quote the server they could not reach.
    down_url = url.replace("mongodb://", f"mongodb://app:{SECRET}@")
    faults.stop_mongodb(servers)
    try:
        down = [run_job(secret_url, mongo_db, mongodb_url=down_url, mapping_path=mapping)
                for _ in range(5)]
    finally:
        faults.start_mongodb(servers)
    during = messages(pg_engine)
    reports_down = report_rows(pg_engine)
    assert [r.success for r in down] == [True] * 5
    assert [(r["status"], r["mongo_available"]) for r in reports_down] == [
        ("partial", False)] * 5
    assert not [m for m in during.values() if m["status"] in ("dead", "sent")]
    charged = {i: m["attempts"] for i, m in during.items()
               if m["attempts"] != before[i]["attempts"]}

    def all_due() -> bool:
        with pg_engine.connect() as conn:
            return not conn.execute(sa.text(
                "select count(*) from outbox_messages where next_attempt_at > now()")
            ).scalar_one()

    faults.embedded.wait_until(all_due, "the backoff to pass", faults.WAIT_SECONDS)
    recovered = run_job(secret_url, mongo_db, mongodb_url=url, mapping_path=mapping)
    assert recovered.success, step_errors(recovered)
    after = messages(pg_engine)
    assert_converged(pg_engine, mongo_db, seeded.summary)
    print_figures("five-runs-mongodb-down", pg_engine, mongo_db, [*down, recovered],
                  runs=6, messages=len(before),
                  charged_attempts=sum(charged.values()) - sum(
                      before[i]["attempts"] for i in charged),
                  dead=sum(m["status"] == "dead" for m in after.values()),
                  sent_after_recovery=sum(m["status"] == "sent" for m in after.values()),
                  lost=0)
    assert {m["status"] for m in after.values()} == {"sent"}
    assert charged == {}  # no attempt charged by the outage
