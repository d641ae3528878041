"""Whole runs of `reconciliation_job` under faults (SPEC 6: Repair, Outbox retry, Status).

MongoDB faults are `failCommand` fail points aimed at the run's own client (named by the
`appName` in its URL), so the test's reads and writes are never hit. PostgreSQL faults are
triggers that raise. After every run both databases are compared with what they must hold.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.definitions import defs
from recon_pipeline.local.embedded import free_port
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline.stores.mongo import create_client
from recon_pipeline_tests import faults
from recon_pipeline_tests.conftest import ServerUrls, mongo_url_of
from recon_pipeline_tests.dagster_support import (
    WINDOW_END,
    WINDOW_START,
    Seeded,
    seed,
    test_resources,
)
from recon_pipeline_tests.defs.test_assets import PARTITION, latest_report
from recon_pipeline_tests.engine.test_outbox import email, email_doc, insert, upsert_email

Db = Database[dict[str, Any]]
APP = "recon-run-under-test"
FAIL_POINT = "Failing command via 'failCommand' failpoint"
REPAIR_ERROR = f"MongoDB error 2: {FAIL_POINT}"
OUTBOX_ERROR = f"MongoDB write failed: {FAIL_POINT} (code 2)"
CHECKS = {"no_unrepaired_mismatches", "mismatch_rate_below_threshold",
          "outbox_has_no_dead_letters", "mongo_reachable", "outbox_backlog_fresh",
          "mismatch_rate_in_usual_range"}
WINDOW = {"window_start": WINDOW_START, "window_end": WINDOW_END}


# --- helpers ------------------------------------------------------------------------------


def run_url(mongo_db: Db) -> str:
    """The test server, through a client fail points aim at; quick to notice a server
    that comes back after a closed connection."""
    url = mongo_url_of(mongo_db)
    return f"{url}{'&' if '?' in url else '/?'}appName={APP}&heartbeatFrequencyMS=500"


def execute(pg_url: str, mongo_db: Db, *, mongodb_url: str | None = None,
            mapping: Path | None = None, **options: Any) -> ExecuteInProcessResult:
    job = defs.resolve_job_def("reconciliation_job")
    with DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(
            run_config=recon_pipeline.run_config(**options), instance=instance,
            partition_key=PARTITION, raise_on_error=False,
            resources=test_resources(pg_url, mongo_db, mapping,
                                     mongodb_url=mongodb_url or run_url(mongo_db)))


@contextmanager
def failing(servers: ServerUrls, mode: Any, **data: Any) -> Iterator[None]:
    with faults.fail_point(servers.mongodb_url, APP, mode, **data):
        yield


def mongo_state(db: Db) -> dict[str, list[dict[str, Any]]]:
    return {name: list(db[name].find({}, sort=[("_id", 1)]))
            for name in sorted(db.list_collection_names())}


def mismatches(engine: sa.Engine, report_id: int) -> list[dict[str, Any]]:
    m = schema.reconciliation_mismatches.c
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(m.id, m.entity, m.kind, m.repair_status, m.repair_error)
            .where(m.report_id == report_id).order_by(m.id)).mappings()]


def outbox(engine: sa.Engine) -> list[dict[str, Any]]:
    m = schema.outbox_messages.c
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(m.id, m.status, m.attempts, m.last_error, m.next_attempt_at)
            .order_by(m.id)).mappings()]


def live_keys(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count())
                                .select_from(schema.idempotency_keys)).scalar_one())


def checks(result: ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def unrepairable_counts(seeded: Seeded) -> dict[str, int]:
    """The figures of a run whose repairs all fail: found as seeded, none repaired."""
    counts = seeded.counts
    return {**counts, "repaired": 0,
            "repair_failed": counts["missing_in_mongo"] + counts["field_mismatches"]}


def assert_repair_stopped_by(rows: list[dict[str, Any]], error: str) -> None:
    """The first group (the entity of the first mismatch) failed with the error itself,
    every other repairable mismatch `repair stopped`, orphans only reported."""
    first = rows[0]["entity"]
    for row in rows:
        if row["kind"] == "orphan_in_mongo":
            expected = ("reported", None)
        else:
            expected = ("failed", error if row["entity"] == first
                        else f"repair stopped: {error}")
        assert (row["repair_status"], row["repair_error"]) == expected, row


def add_trigger(engine: sa.Engine, table: str, event: str) -> None:
    """A PostgreSQL fault: every `event` on `table` raises."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "create function injected_fault() returns trigger language plpgsql as "
            "$$ begin raise exception 'injected fault'; end $$"))
        conn.execute(sa.text(f"create trigger injected_fault before {event} on {table} "
                             "for each statement execute function injected_fault()"))


def drop_trigger(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop trigger injected_fault on {table}"))
        conn.execute(sa.text("drop function injected_fault()"))


# --- repair faults ------------------------------------------------------------------------


def test_every_update_failing_during_repair_completes_the_run(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    before = mongo_state(mongo_db)
    with failing(servers, "alwaysOn", failCommands=["update"], errorCode=2):
        result = execute(pg_url, mongo_db, **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    # The outbox met the same fault: its 3 well-formed messages are charged, 3 malformed dead.
    expected = {**unrepairable_counts(seeded), "outbox_attempted": 6, "outbox_sent": 0,
                "outbox_failed": 3, "outbox_dead": 3}
    assert {name: row[name] for name in expected} == expected
    assert (row["status"], row["mongo_available"]) == ("needs_attention", True)
    assert row["details"]["repair_stopped"] == {"error": REPAIR_ERROR,
                                               "connection_lost": False}
    [event] = result.get_asset_materialization_events()
    summary = event.materialization.metadata["summary"].value
    assert f"Repair stopped by a MongoDB error: {REPAIR_ERROR}." in str(summary)
    assert_repair_stopped_by(mismatches(pg_engine, row["id"]), REPAIR_ERROR)
    assert [(m["status"], m["attempts"], m["last_error"]) for m in outbox(pg_engine)][:3] == \
        [("failed", 2, OUTBOX_ERROR)] * 3
    assert [m["status"] for m in outbox(pg_engine)][3:] == ["dead"] * 3
    assert live_keys(pg_engine) == 2  # cleanup ran
    assert set(checks(result)) == CHECKS
    assert checks(result)["no_unrepaired_mismatches"] is False
    assert mongo_state(mongo_db) == before


def test_a_write_concern_error_during_repair_stops_it_unverified(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    drift = seeded.summary.drift["incoming_emails"]
    emails = mongo_db.incoming_emails.count_documents({})
    with failing(servers, "alwaysOn", failCommands=["update"],
                 writeConcernError=faults.WRITE_CONCERN):
        result = execute(pg_url, mongo_db, entities=["incoming_emails"], **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    error = "MongoDB write concern error: waiting for replication timed out"
    fixes = len(drift.missing) + len(drift.mismatched)
    assert (row["status"], row["records_checked"], row["repaired"], row["repair_failed"],
            row["orphans_in_mongo"], row["outbox_attempted"], row["outbox_failed"]) == (
        "needs_attention", drift.rows, 0, fixes, len(drift.orphans), 6, 3)
    assert row["details"]["repair_stopped"] == {"error": error, "connection_lost": False}
    # One entity, one group: every fix failed with the error itself, none was left waiting.
    assert {(m["kind"] == "orphan_in_mongo", m["repair_status"], m["repair_error"])
            for m in mismatches(pg_engine, row["id"])} == {
        (False, "failed", error), (True, "reported", None)}
    assert set(checks(result)) == CHECKS
    # The server applied the writes all the same: MongoDB now agrees but for the orphans.
    assert mongo_db.incoming_emails.count_documents({}) == emails + len(drift.missing)
    assert execute(pg_url, mongo_db, entities=["incoming_emails"], dry_run=True,
                   **WINDOW).success
    again = latest_report(pg_engine)
    assert (again["mismatches_found"], again["orphans_in_mongo"]) == (
        len(drift.orphans), len(drift.orphans))


def test_a_lost_connection_during_repair_makes_the_run_partial(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    before, messages = mongo_state(mongo_db), outbox(pg_engine)
    # alwaysOn: pymongo's one silent retry of a write meets a closed connection too.
    with failing(servers, "alwaysOn", failCommands=["update"], closeConnection=True):
        result = execute(pg_url, mongo_db, **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    error = row["details"]["repair_stopped"]["error"]
    assert error.startswith("MongoDB unreachable: ")
    assert row["details"]["repair_stopped"]["connection_lost"] is True
    # The outbox stopped at its first message, charging nothing; the rest is left due.
    expected = {**unrepairable_counts(seeded), "outbox_attempted": 1, "outbox_sent": 0,
                "outbox_failed": 1, "outbox_dead": 0}
    assert {name: row[name] for name in expected} == expected
    assert (row["status"], row["mongo_available"]) == ("partial", True)
    assert_repair_stopped_by(mismatches(pg_engine, row["id"]), error)
    after = outbox(pg_engine)
    assert (after[0]["status"], after[0]["attempts"]) == ("failed", 1)  # seeded with 1
    assert after[0]["last_error"].startswith("MongoDB unreachable: ")
    assert after[0]["next_attempt_at"] > messages[0]["next_attempt_at"]
    assert after[1:] == messages[1:]
    assert live_keys(pg_engine) == 2
    assert set(checks(result)) == CHECKS
    assert mongo_state(mongo_db) == before


def finds(servers: ServerUrls) -> int:
    """`find` commands the server has answered so far."""
    client = create_client(servers.mongodb_url)
    try:
        return int(client.admin.command("serverStatus")["opcounters"]["query"])
    finally:
        client.close()


def test_a_find_failing_during_repairs_re_read_stops_repair(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    # Repair's first read comes after the outbox's and the extraction's: a dry run of the
    # same data counts those, and the fail point lets exactly that many through.
    seed(pg_engine, mongo_db, config)
    counted = finds(servers)
    assert execute(pg_url, mongo_db, dry_run=True, **WINDOW).success
    before_repair = finds(servers) - counted
    seeded = seed(pg_engine, mongo_db, config)  # the same data again
    before = mongo_state(mongo_db)
    with failing(servers, {"skip": before_repair}, failCommands=["find"], errorCode=2):
        result = execute(pg_url, mongo_db, **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    expected = unrepairable_counts(seeded)
    assert {name: row[name] for name in expected} == expected
    assert (row["status"], row["mongo_available"]) == ("needs_attention", True)
    assert row["details"]["repair_stopped"] == {"error": REPAIR_ERROR,
                                               "connection_lost": False}
    assert_repair_stopped_by(mismatches(pg_engine, row["id"]), REPAIR_ERROR)
    assert [m["status"] for m in outbox(pg_engine)] == ["sent"] * 3 + ["dead"] * 3
    assert live_keys(pg_engine) == 2
    assert set(checks(result)) == CHECKS
    assert mongo_state(mongo_db) == before  # the outbox's rows agreed already


# --- a run that fails keeps the figures of what it completed ------------------------------


def test_a_run_failing_after_the_outbox_keeps_its_outbox_figures(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    add_trigger(pg_engine, "reconciliation_mismatches", "insert")
    result = execute(pg_url, mongo_db, **WINDOW)

    assert not result.success
    row = latest_report(pg_engine)
    kept = {"outbox_attempted": 6, "outbox_sent": 3, "outbox_failed": 0, "outbox_dead": 3,
            "outbox_stale": 0}
    assert {name: row[name] for name in kept} == kept
    assert (row["status"], row["finished_at"], row["records_checked"],
            row["mismatches_found"], row["idempotency_keys_deleted"]) == ("failed", None, 0,
                                                                          0, 0)
    assert [m["status"] for m in outbox(pg_engine)] == ["sent"] * 3 + ["dead"] * 3
    assert live_keys(pg_engine) == 6  # cleanup never ran
    assert result.get_asset_check_evaluations() == []

    drop_trigger(pg_engine, "reconciliation_mismatches")
    assert execute(pg_url, mongo_db, **WINDOW).success  # MongoDB still holds all the drift
    again = latest_report(pg_engine)
    counts = {**seeded.counts, "outbox_attempted": 0, "outbox_sent": 0, "outbox_dead": 0}
    assert {name: again[name] for name in counts} == counts


def test_a_run_failing_in_cleanup_keeps_every_figure_before_it(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    add_trigger(pg_engine, "idempotency_keys", "delete")
    result = execute(pg_url, mongo_db, **WINDOW)

    assert not result.success
    row = latest_report(pg_engine)
    kept = {**seeded.counts, "idempotency_keys_deleted": 0}
    assert {name: row[name] for name in kept} == kept
    assert (row["status"], row["finished_at"]) == ("failed", None)
    assert live_keys(pg_engine) == 6

    drop_trigger(pg_engine, "idempotency_keys")
    assert execute(pg_url, mongo_db, **WINDOW).success  # MongoDB was repaired
    again = latest_report(pg_engine)
    orphans = seeded.counts["orphans_in_mongo"]
    assert (again["mismatches_found"], again["orphans_in_mongo"], again["repaired"],
            again["idempotency_keys_deleted"]) == (orphans, orphans, 0, 4)


# --- the outbox: outages charge nothing ---------------------------------------------------


def strict_mapping(tmp_path: Path) -> Path:
    """The packaged mapping with 3 attempts: five charged runs would dead-letter."""
    path = tmp_path / "recon.yaml"
    path.write_text(packaged_mapping_path().read_text().replace(
        "max_attempts: 8", "max_attempts: 3"))
    return path


def four_messages(engine: sa.Engine) -> list[dict[str, Any]]:
    rows = [email(i) for i in range(1, 5)]
    insert(engine, schema.incoming_emails, *rows)
    for row in rows:
        upsert_email(engine, row)
    return rows


def an_hour_passes(engine: sa.Engine) -> None:
    """Every message waiting for its backoff is due again, as at the next hourly run."""
    with engine.begin() as conn:
        conn.execute(sa.text("update outbox_messages set next_attempt_at = now() "
                             "where status in ('pending', 'failed')"))


def test_five_runs_while_mongodb_is_down_charge_nothing_and_all_arrive_after(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, tmp_path: Path
) -> None:
    mapping = strict_mapping(tmp_path)
    rows = four_messages(pg_engine)
    down = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    every_command = ["ping", "find", "update", "insert", "delete", "aggregate"]
    for attempt in range(5):
        an_hour_passes(pg_engine)
        started = datetime.now(UTC)
        if attempt < 4:  # connections closed by the server
            with failing(servers, "alwaysOn", failCommands=every_command,
                         closeConnection=True):
                result = execute(pg_url, mongo_db, mapping=mapping, **WINDOW)
        else:  # nothing listening: server selection times out
            result = execute(pg_url, mongo_db, mapping=mapping, mongodb_url=down, **WINDOW)
        finished = datetime.now(UTC)

        assert result.success
        row = latest_report(pg_engine)
        assert (row["status"], row["mongo_available"], row["outbox_attempted"],
                row["outbox_failed"], row["outbox_dead"]) == ("partial", False, 1, 1, 0)
        messages = outbox(pg_engine)
        assert [(m["status"], m["attempts"]) for m in messages] == \
            [("failed", 0)] + [("pending", 0)] * 3
        assert messages[0]["last_error"].startswith("MongoDB unreachable: ")
        # The backoff of a first failure (60 s) applies, without the attempt.
        assert started + timedelta(seconds=60) <= messages[0]["next_attempt_at"] \
            <= finished + timedelta(seconds=60)
        assert checks(result)["mongo_reachable"] is False
        assert mongo_state(mongo_db) == {}

    an_hour_passes(pg_engine)
    assert execute(pg_url, mongo_db, mapping=mapping, **WINDOW).success
    row = latest_report(pg_engine)
    assert (row["status"], row["outbox_attempted"], row["outbox_sent"]) == ("success", 4, 4)
    assert [(m["status"], m["attempts"]) for m in outbox(pg_engine)] == [("sent", 0)] * 4
    assert mongo_state(mongo_db) == {"incoming_emails": [email_doc(r) for r in rows]}


def test_a_message_whose_own_write_fails_is_charged(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db, tmp_path: Path
) -> None:
    four_messages(pg_engine)
    with failing(servers, "alwaysOn", failCommands=["update"], errorCode=2):
        result = execute(pg_url, mongo_db, mapping=strict_mapping(tmp_path), **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    assert (row["status"], row["outbox_attempted"], row["outbox_failed"]) == ("success", 4, 4)
    assert [(m["status"], m["attempts"], m["last_error"]) for m in outbox(pg_engine)] == \
        [("failed", 1, OUTBOX_ERROR)] * 4
    assert mongo_state(mongo_db) == {}


def test_older_messages_of_a_record_are_not_sent_when_the_newest_write_fails(
    servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db
) -> None:
    versions = [email(1, datetime(2026, 3, 1, 12, m, tzinfo=UTC), subject=f"v{m}")
                for m in range(3)]
    insert(pg_engine, schema.incoming_emails, versions[-1])
    ids = [upsert_email(pg_engine, row) for row in versions]
    with failing(servers, "alwaysOn", failCommands=["update"], errorCode=2):
        result = execute(pg_url, mongo_db, **WINDOW)

    assert result.success
    row = latest_report(pg_engine)
    assert (row["outbox_attempted"], row["outbox_sent"], row["outbox_failed"]) == (3, 0, 3)
    superseded = f"superseded by message {ids[2]}, which was not delivered: {OUTBOX_ERROR}"
    assert [(m["status"], m["attempts"], m["last_error"]) for m in outbox(pg_engine)] == [
        ("failed", 1, superseded), ("failed", 1, superseded), ("failed", 1, OUTBOX_ERROR)]
    assert mongo_state(mongo_db) == {}

    an_hour_passes(pg_engine)
    assert execute(pg_url, mongo_db, **WINDOW).success
    row = latest_report(pg_engine)
    assert (row["outbox_attempted"], row["outbox_sent"], row["outbox_stale"]) == (3, 3, 2)
    assert [m["status"] for m in outbox(pg_engine)] == ["sent"] * 3
    assert mongo_state(mongo_db) == {"incoming_emails": [email_doc(versions[-1])]}
