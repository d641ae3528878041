"""Outbox delivery throughput (SPEC 10), as ratios measured in one run on the same documents:

- deliver_outbox vs a raw `bulk_write` of the same documents with the same guarded upserts
  (target >= 0.8): what claiming, planning and recording outcomes cost;
- the same vs plain unguarded upserts, for information: the version guard's own cost on the
  server (on secantusdb a guarded upsert is ~0.8x a plain one and falls as it fills);
- deliver_outbox vs one MongoDB write and one PostgreSQL commit per message (target >= 3x),
  measured on a sample and compared as a rate.

Raw writes and delivery alternate in rounds, so load that drifts during the run (a shared
machine) falls on all sides alike.

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

from benchmarks.servers import BenchServers, bench_servers
from recon_pipeline.engine.outbox.deliver import deliver_outbox
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
ROUNDS = 10
NOW = datetime(2026, 1, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Timing:
    documents: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.documents / self.seconds if self.seconds else float("inf")


def email_rows(count: int) -> list[dict[str, Any]]:
    base = NOW - timedelta(days=1)
    return [{"id": i, "client_ref": f"C{i % 5000:06d}", "from_address": f"noreply{i}@bank.example",
             "subject": f"Statement {i}", "received_at": base + timedelta(seconds=i % 86_400),
             "processing_status": ("new", "parsed", "needs_review")[i % 3],
             "extracted_amount": Decimal(i % 90_000) / 100 if i % 10 else None,
             "mongo_sync_status": "pending", "mongo_synced_at": None, "mongo_sync_error": None,
             "created_at": base, "updated_at": base + timedelta(microseconds=i)}
            for i in range(1, count + 1)]


def seed(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    chunk = 10_000
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        with engine.begin() as conn:
            conn.execute(schema.incoming_emails.insert(), part)
            conn.execute(schema.outbox_messages.insert(), [
                {"aggregate_type": ENTITY, "aggregate_id": str(r["id"]), "operation": "upsert",
                 "payload": row_payload(r), "created_at": r["updated_at"],
                 "next_attempt_at": r["updated_at"]} for r in part])


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
                         entity: EntityMapping, rows: list[dict[str, Any]]) -> Timing:
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
    return Timing(len(rows), elapsed)


@dataclass(frozen=True, slots=True)
class Measured:
    guarded: Timing
    plain: Timing
    delivery: Timing


def interleaved(engine: sa.Engine, db: Database[dict[str, Any]], config: ReconConfig,
                rows: list[dict[str, Any]]) -> Measured:
    """Raw guarded bulk_write, raw plain bulk_write (every other round: it is only for
    information) and deliver_outbox over the same documents, alternating in rounds."""
    entity = config.entity(ENTITY)
    batch = config.settings.outbox.batch_size
    round_size = max(batch, -(-len(rows) // ROUNDS // batch) * batch)
    guarded = plain = deliver = 0.0
    plain_documents = delivered = 0
    for number, start in enumerate(range(0, len(rows), round_size)):
        part = rows[start:start + round_size]
        guarded += timed_bulk_writes(db["bench_raw_guarded"], guarded_ops(entity, part), batch)
        if number % 2 == 0:
            plain += timed_bulk_writes(db["bench_raw_plain"], plain_ops(entity, part), batch)
            plain_documents += len(part)
        began = time.perf_counter()
        result = deliver_outbox(engine, db, config, now=lambda: NOW,
                                max_batches=-(-len(part) // batch))
        deliver += time.perf_counter() - began
        delivered += result.sent
    if delivered != len(rows):
        raise RuntimeError(f"outbox benchmark: delivered {delivered} of {len(rows)} messages")
    return Measured(Timing(len(rows), guarded), Timing(plain_documents, plain),
                    Timing(len(rows), deliver))


def run(servers: BenchServers, messages: int = 100_000) -> list[str]:
    with servers.fresh_database() as (engine, _url, mongo_name):
        config: ReconConfig = load_mapping(packaged_mapping_path(), engine)
        client = create_client(servers.mongodb_url)
        try:
            db = client[mongo_name]
            rows = email_rows(messages)
            seed(engine, rows)
            sample = rows[:min(BASELINE_SAMPLE, messages)]
            baseline = per_message_baseline(engine, db, config.entity(ENTITY), sample)
            measured = interleaved(engine, db, config, rows)
        finally:
            client.close()
    delivery = measured.delivery.rate
    return [
        f"outbox delivery: {delivery:,.0f} msg/s over {messages:,} messages; raw bulk_write "
        f"{measured.guarded.rate:,.0f} docs/s guarded, {measured.plain.rate:,.0f} docs/s "
        f"plain; one write + one commit per message {baseline.rate:,.0f} msg/s "
        f"(on {len(sample):,})",
        f"outbox delivery vs raw bulk_write: {delivery / measured.guarded.rate:.2f}x "
        f"(target >= 0.8; the same guarded upserts)",
        f"outbox delivery vs raw bulk_write of plain upserts: "
        f"{delivery / measured.plain.rate:.2f}x (information: includes the guard's cost)",
        f"outbox delivery vs one write + one commit per message: "
        f"{delivery / baseline.rate:.1f}x (target >= 3)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    with bench_servers() as servers:
        for line in run(servers, args.messages):
            print(line)


if __name__ == "__main__":
    main()
