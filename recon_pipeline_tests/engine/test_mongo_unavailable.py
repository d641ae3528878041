"""MongoDB unreachable: extraction, diff and repair are skipped, the report says so."""

from typing import Any

import sqlalchemy as sa
from dagster import DagsterEventType
from pymongo.database import Database

from recon_pipeline.local.embedded import free_port
from recon_pipeline.stores import schema
from recon_pipeline_tests.builders import email_row, insert, window
from recon_pipeline_tests.dagster_support import report_of, run_job


def test_run_is_partial_and_touches_nothing(pg_url: str, pg_engine: sa.Engine,
                                            mongo_db: Database[Any]) -> None:
    insert(pg_engine, schema.incoming_emails, email_row(1, "C1"))
    down = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    span = window()
    result = run_job(pg_url, mongo_db, mongodb_url=down, window_start=span.start,
                         window_end=span.end)
    assert result.success
    report = report_of(pg_engine, result)
    assert report.status == "partial"
    assert report.mongo_available is False
    assert report.counts["records_checked"] == 0
    assert report.counts["outbox_attempted"] == 0
    done = {event.step_key for event in result.all_events
            if event.event_type == DagsterEventType.STEP_SUCCESS}
    # still retried the outbox and cleaned up; no chunk was planned
    assert {"reconciliation_report.retry_outbox",
            "reconciliation_report.clean_up_op"} <= done
    assert not any(key and "diff_chunk_op" in key for key in done)
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "select count(*) from reconciliation_mismatches")).scalar_one() == 0
    assert mongo_db.client.list_database_names().count(mongo_db.name) == 0
