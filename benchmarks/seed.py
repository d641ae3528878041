"""Benchmark data: `incoming_emails` rows (the demo domain's document entity) and their
consistent MongoDB documents, seeded in key ranges so one table can grow from one
measured size to the next.

One row in `WINDOW_EVERY` (keys divisible by it, spread over the whole key range as real
updates are) has `updated_at` inside `WINDOW`, one hour; every other row is older (the
30 days before it). So an hourly run over `WINDOW` holds 1% of the table whatever its
size, and a full scan holds it all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.projection import nest, projected_fields, row_version
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import EntityMapping, ReconConfig
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.target import VERSION_FIELD, ensure_target_indexes

ENTITY = "incoming_emails"
WINDOW_START = datetime(2026, 5, 31, 22, tzinfo=UTC)
WINDOW = (WINDOW_START, WINDOW_START + timedelta(hours=1))
WINDOW_EVERY = 100  # 1% of the rows changed inside WINDOW
SEED_BATCH = 5000


def mapping(engine: sa.Engine) -> ReconConfig:
    """The packaged mapping, as it ships (default settings)."""
    return load_mapping(packaged_mapping_path(), engine)


def seed_emails(engine: sa.Engine, db: Database[dict[str, Any]], first: int, last: int) -> None:
    """Rows with keys first..last and their documents (consistent), then the indexes
    `recon-pipeline db init` creates, as a user's database has them."""
    with engine.begin() as conn:
        conn.execute(sa.text("""
            insert into incoming_emails (id, client_ref, from_address, subject, received_at,
                processing_status, extracted_amount, created_at, updated_at)
            select i, 'C' || lpad((i % 100000)::text, 6, '0'), 'n' || i || '@x.example',
                   'Statement ' || i, :ws - make_interval(secs => i),
                   (array['new','parsed','needs_review'])[1 + i % 3],
                   case when i % 10 = 0 then null else (i % 100000) / 100.0 end,
                   :ws - make_interval(secs => 3600 + i),
                   case when i % cast(:every as bigint) = 0
                        then :ws + make_interval(secs => (i / cast(:every as bigint)) % 3600)
                        else :ws - make_interval(secs => 1 + i % 2592000) end
            from generate_series(cast(:first as bigint), cast(:last as bigint)) i"""),
            {"first": first, "last": last, "ws": WINDOW_START, "every": WINDOW_EVERY})
        conn.execute(sa.text("analyze incoming_emails"))
    entity = mapping(engine).entity(ENTITY)
    collection = db[entity.target.collection]
    for low in range(first, last + 1, SEED_BATCH):
        rows = _rows(engine, low, min(low + SEED_BATCH - 1, last))
        collection.insert_many([document(entity, row) for row in rows], ordered=False)
    ensure_target_indexes(db, [entity])


def _rows(engine: sa.Engine, low: int, high: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            sa.text("select * from incoming_emails where id between :low and :high "
                    "order by id"), {"low": low, "high": high}).mappings()]


def document(entity: EntityMapping, row: dict[str, Any]) -> dict[str, Any]:
    """The document a consistent read model holds for `row`."""
    return {"_id": row[entity.source.key], **nest(projected_fields(entity, row)),
            VERSION_FIELD: row_version(entity, row)}
