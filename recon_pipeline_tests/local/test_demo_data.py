"""Demo data: drift of every kind, in both databases, the same for the same seed."""

from datetime import UTC, datetime

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.local.demo_data import MUTATIONS, seed_demo
from recon_pipeline.model.mapping import ReconConfig

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _count(engine: sa.Engine, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query)).scalar_one())


def test_seed_writes_drift_of_every_kind(
    pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig
) -> None:
    summary = seed_demo(pg_engine, mongo_db, config, clients=60, drift_rate=0.2, seed=11, now=NOW)
    clients, debts, emails = (summary.drift[n] for n in
                              ("clients", "creditor_debts", "incoming_emails"))
    assert clients.rows == _count(pg_engine, "select count(*) from clients") == 60
    assert debts.rows == _count(pg_engine, "select count(*) from creditor_debts")
    for drift in (clients, debts, emails):
        assert drift.orphans, "every entity gets orphans"
    assert debts.missing and emails.missing and clients.mismatched
    assert mongo_db.clients.count_documents({}) == 60 - len(clients.missing) + len(clients.orphans)
    assert mongo_db.incoming_emails.count_documents({}) == 60 - len(emails.missing) + len(
        emails.orphans)
    column, wrong = MUTATIONS["incoming_emails"]
    assert column == "subject"
    assert mongo_db.incoming_emails.count_documents({"subject": wrong}) == len(emails.mismatched)
    elements = [e["creditor_id"] for d in mongo_db.clients.find({}, {"final_creditor_list": 1})
                for e in d.get("final_creditor_list", [])]
    assert len(elements) == debts.rows - len(debts.missing) + len(debts.orphans)
    assert set(debts.missing).isdisjoint(elements)
    assert _count(pg_engine, "select count(*) from outbox_messages where status = 'failed'") == 3
    assert _count(pg_engine, "select count(*) from outbox_messages where status = 'pending'") == 3
    expired = "select count(*) from idempotency_keys where expires_at < '2026-03-01T12:00Z'"
    assert _count(pg_engine, expired) == 4


def test_same_seed_same_data(pg_engine: sa.Engine, mongo_db: Database, config: ReconConfig) -> None:
    def snapshot() -> tuple:
        with pg_engine.connect() as conn:
            rows = conn.execute(sa.text(
                "select client_ref, first_name, status, updated_at from clients order by 1")).all()
        docs = list(mongo_db.incoming_emails.find({}, sort=[("_id", 1)]))
        return rows, docs

    seed_demo(pg_engine, mongo_db, config, clients=25, seed=5, now=NOW)
    first = snapshot()
    seed_demo(pg_engine, mongo_db, config, clients=25, seed=5, now=NOW)
    assert snapshot() == first
    seed_demo(pg_engine, mongo_db, config, clients=25, seed=6, now=NOW)
    assert snapshot() != first
