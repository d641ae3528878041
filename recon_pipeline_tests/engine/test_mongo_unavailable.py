"""MongoDB unreachable: extraction, diff and repair are skipped, the report says so."""

import sqlalchemy as sa

from recon_pipeline.embedded import free_port
from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline.engine.reconcile import RunRequest, run_reconciliation
from recon_pipeline.stores import schema
from recon_pipeline_tests.builders import T0, email_row, insert, window


def test_run_is_partial_and_touches_nothing(pg_engine: sa.Engine, config: ReconConfig) -> None:
    insert(pg_engine, schema.incoming_emails, email_row(1, "C1"))
    down = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    calls: list[str] = []
    report = run_reconciliation(
        pg_engine, down, "recon", config, RunRequest("r-down", window()),
        clock=lambda: T0,
        outbox=lambda db: calls.append("outbox") or {"outbox_attempted": 0},
        cleanup=lambda: calls.append("cleanup") or {"idempotency_keys_deleted": 0})
    assert report.status == "partial"
    assert report.mongo_available is False
    assert report.counts["records_checked"] == 0
    assert calls == ["outbox", "cleanup"]  # still retried and cleaned up
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "select count(*) from reconciliation_mismatches")).scalar_one() == 0
