"""Outbox delivery throughput (SPEC 10) through the job, as ratios measured in one run on the
same documents:

- the outbox phase of a `reconciliation_job` run (the `retry_outbox` step, timed from the
  run's event log: claiming, delivering, recording outcomes) vs a raw `bulk_write` of the
  same documents with the same guarded upserts (target >= 0.8);
- the same vs plain unguarded upserts, for information: the version guard's own cost on the
  server (on secantusdb a guarded upsert is ~0.8x a plain one and falls as it fills);
- the same vs one MongoDB write and one PostgreSQL commit per message (target >= 3x),
  measured on a sample and compared as a rate.

Raw writes and job runs alternate in rounds (each round's messages are queued just before
its run), so load that drifts during the run (a shared machine) falls on all sides alike.
The runs judge a window that holds none of the rows: the outbox step is what is timed.

    python -m benchmarks.bench_outbox --messages 20000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from benchmarks.paths import RunTarget, Timed, run_in_process
from benchmarks.servers import BenchServers, bench_servers
from benchmarks.verdict import info, verdict
from recon_pipeline.engine.projection import (
    Presence,
    WriteOp,
    projected_fields,
    row_version,
    upsert_ops,
    version_guard,
)
from recon_pipeline.local.demo_data import row_payload
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import EntityMapping, ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.target import VERSION_FIELD

ENTITY = "incoming_emails"
BASELINE_SAMPLE = 5_000
ROUNDS = 3  # a job run each: its fixed cost is paid per round, though not timed
NOW = datetime(2026, 1, 2, tzinfo=UTC)
# A window before every row's updated_at: the runs judge nothing, they deliver.
EMPTY_WINDOW = {"window_start": datetime(2025, 1, 1, tzinfo=UTC),
                "window_end": datetime(2025, 1, 1, 1, tzinfo=UTC)}


def email_rows(count: int) -> list[dict[str, Any]]:
    base = NOW - timedelta(days=1)
    return [{"id": i, "client_ref": f"C{i % 5000:06d}", "from_address": f"noreply{i}@bank.example",
             "subject": f"Statement {i}", "received_at": base + timedelta(seconds=i % 86_400),
             "processing_status": ("new", "parsed", "needs_review")[i % 3],
             "extracted_amount": Decimal(i % 90_000) / 100 if i % 10 else None,
             "mongo_sync_status": "pending", "mongo_synced_at": None, "mongo_sync_error": None,
             "created_at": base, "updated_at": base + timedelta(microseconds=i)}
            for i in range(1, count + 1)]


def seed_rows(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 10_000):
        with engine.begin() as conn:
            conn.execute(schema.incoming_emails.insert(), rows[start:start + 10_000])


def queue_messages(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """One pending upsert message per row, due now."""
    for start in range(0, len(rows), 10_000):
        with engine.begin() as conn:
            conn.execute(schema.outbox_messages.insert(), [
                {"aggregate_type": ENTITY, "aggregate_id": str(r["id"]), "operation": "upsert",
                 "payload": row_payload(r), "created_at": r["updated_at"],
                 "next_attempt_at": r["updated_at"]} for r in rows[start:start + 10_000]])


def plain_ops(entity: EntityMapping, rows: list[dict[str, Any]]) -> list[UpdateOne]:
    """The same documents as plain upserts: no guard, no claim, nothing recorded."""
    return [UpdateOne({"_id": r["id"]}, {"$set": {**projected_fields(entity, r),
                                                  VERSION_FIELD: row_version(entity, r)}},
                      upsert=True) for r in rows]


def guarded_ops(entity: EntityMapping, rows: list[dict[str, Any]]) -> list[WriteOp]:
    """The very writes delivery sends (the projection's guarded upserts), built beforehand."""
    return [op for r in rows for op in upsert_ops(entity, r, Presence.ABSENT)]


def timed_bulk_writes(collection: Collection[dict[str, Any]], ops: Sequence[WriteOp],
                      batch: int) -> float:
    began = time.perf_counter()
    for i in range(0, len(ops), batch):
        collection.bulk_write(list(ops[i:i + batch]), ordered=False)
    return time.perf_counter() - began


def per_message_baseline(engine: sa.Engine, db: Database[dict[str, Any]],
                         entity: EntityMapping, rows: list[dict[str, Any]]) -> Timed:
    """The naive delivery: for each message one guarded write and one commit."""
    m = schema.outbox_messages.c
    collection = db["bench_per_message"]
    started = time.perf_counter()
    with engine.connect() as conn:
        ids = conn.execute(sa.select(m.id).where(m.status == "pending").order_by(m.id)
                           .limit(len(rows))).scalars().all()
        conn.commit()
        for message_id, row in zip(ids, rows, strict=True):
            version = row_version(entity, row)
            collection.update_one(
                {"_id": row["id"], **version_guard(version, entity.version_fallback)},
                {"$set": {**projected_fields(entity, row), VERSION_FIELD: version}}, upsert=True)
            conn.execute(sa.update(schema.outbox_messages).where(m.id == message_id)
                         .values(status="sent", processed_at=NOW))
            conn.commit()
    elapsed = time.perf_counter() - started
    with engine.begin() as conn:  # the sample is delivered again by the measured run
        conn.execute(sa.update(schema.outbox_messages).where(m.id.in_(ids))
                     .values(status="pending", processed_at=None))
    return Timed(len(rows), elapsed)


@dataclass(frozen=True, slots=True)
class Measured:
    guarded: Timed
    plain: Timed
    delivery: Timed  # the retry_outbox steps of the job runs


def interleaved(engine: sa.Engine, db: Database[dict[str, Any]], target: RunTarget,
                config: ReconConfig, rows: list[dict[str, Any]]) -> tuple[Measured, Timed]:
    """Raw guarded bulk_write, raw plain bulk_write (every other round: it is only for
    information) and a job run delivering the same documents, alternating in rounds; the
    per-message baseline on the first round's first messages, before its run delivers
    them."""
    entity = config.entity(ENTITY)
    batch = config.settings.outbox.batch_size
    round_size = max(batch, -(-len(rows) // ROUNDS // batch) * batch)
    guarded = plain = deliver = 0.0
    plain_documents = delivered = 0
    baseline = Timed(0, 0.0)
    for number, start in enumerate(range(0, len(rows), round_size)):
        part = rows[start:start + round_size]
        queue_messages(engine, part)
        if number == 0:
            baseline = per_message_baseline(engine, db, entity, part[:BASELINE_SAMPLE])
        guarded += timed_bulk_writes(db["bench_raw_guarded"], guarded_ops(entity, part), batch)
        if number % 2 == 0:
            plain += timed_bulk_writes(db["bench_raw_plain"], plain_ops(entity, part), batch)
            plain_documents += len(part)
        run = run_in_process(target, entities=[ENTITY], **EMPTY_WINDOW)
        deliver += run.step("retry_outbox")
        delivered += int(run.report["outbox_sent"])
    if delivered != len(rows):
        raise RuntimeError(f"outbox benchmark: delivered {delivered} of {len(rows)} messages")
    return Measured(Timed(len(rows), guarded), Timed(plain_documents, plain),
                    Timed(len(rows), deliver)), baseline


def run(servers: BenchServers, messages: int = 50_000) -> list[str]:
    with servers.fresh_database() as (engine, url, mongo_name):
        config: ReconConfig = load_mapping(packaged_mapping_path(), engine)
        client = create_client(servers.mongodb_url)
        try:
            db = client[mongo_name]
            rows = email_rows(messages)
            seed_rows(engine, rows)
            measured, baseline = interleaved(engine, db, servers.target(url, mongo_name),
                                             config, rows)
        finally:
            client.close()
    delivery = measured.delivery.rate
    label = f"outbox delivery through reconciliation_job [{messages} messages]"
    return [
        info(label, f"{delivery:,.0f} msg/s (retry_outbox steps, {ROUNDS} runs); raw "
             f"bulk_write {measured.guarded.rate:,.0f} docs/s guarded, "
             f"{measured.plain.rate:,.0f} docs/s plain; one write + one commit per message "
             f"{baseline.rate:,.0f} msg/s (on {baseline.count:,})"),
        verdict(f"{label} vs raw bulk_write of the same guarded upserts",
                delivery / measured.guarded.rate, 0.8),
        info(f"{label} vs raw bulk_write of plain upserts",
             f"{delivery / measured.plain.rate:.2f}x (includes the guard's cost)"),
        verdict(f"{label} vs one write + one commit per message", delivery / baseline.rate,
                3, digits=1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    with bench_servers() as servers:
        for line in run(servers, args.messages):
            print(line)


if __name__ == "__main__":
    main()
