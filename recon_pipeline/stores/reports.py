"""The audit trail: `reconciliation_reports` and `reconciliation_mismatches` rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.stores.schema import reconciliation_mismatches as mismatches_table
from recon_pipeline.stores.schema import reconciliation_reports as reports_table
from recon_pipeline.stores.source import Row, mark_sync

INSERT_BATCH = 1000


@dataclass(frozen=True, slots=True)
class MismatchRow:
    id: int
    entity: str
    record_key: str
    kind: str
    fields: dict[str, Any] | None
    repair_status: str


def insert_report(engine: sa.Engine, values: dict[str, Any]) -> int:
    """A report row that says `failed` until the run finishes: a crash leaves it honest."""
    with engine.begin() as conn:
        return int(conn.execute(
            reports_table.insert().values(status="failed", **values)
            .returning(reports_table.c.id)).scalar_one())


def update_report(engine: sa.Engine, report_id: int, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(reports_table.update().where(reports_table.c.id == report_id)
                     .values(**values))


def add_counts(engine: sa.Engine, report_id: int, deltas: dict[str, int]) -> None:
    """Add to counts in one statement: chunks of one run finish in parallel processes."""
    r = reports_table.c
    with engine.begin() as conn:
        conn.execute(reports_table.update().where(r.id == report_id)
                     .values({name: r[name] + delta for name, delta in deltas.items()}))


def refresh_repair_counts(engine: sa.Engine, report_id: int) -> None:
    """`repaired`, `repair_failed` and `repair_skipped` as the mismatch rows say now."""
    m = mismatches_table.c

    def count(*statuses: str) -> sa.ScalarSelect[int]:
        return (sa.select(sa.func.count()).select_from(mismatches_table)
                .where(m.report_id == report_id, m.repair_status.in_(statuses))
                .scalar_subquery())

    with engine.begin() as conn:
        conn.execute(reports_table.update().where(reports_table.c.id == report_id).values(
            repaired=count("repaired"), repair_failed=count("failed"),
            repair_skipped=count("skipped_limit", "dry_run")))


def read_report(engine: sa.Engine, report_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(reports_table)
                                 .where(reports_table.c.id == report_id)).mappings().one())


def recent_reports(engine: sa.Engine, last: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(reports_table).order_by(reports_table.c.id.desc()).limit(last)
        ).mappings()]


def insert_mismatches(engine: sa.Engine, report_id: int, rows: Sequence[dict[str, Any]],
                      detected_at: datetime) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        batch = [{"report_id": report_id, "detected_at": detected_at, **row}
                 for row in rows[start:start + INSERT_BATCH]]
        with engine.begin() as conn:
            conn.execute(mismatches_table.insert(), batch)


def tally(engine: sa.Engine, report_id: int) -> list[tuple[str, str, str, int]]:
    """(entity, kind, repair_status, count) for every mismatch of the report."""
    m = mismatches_table.c
    with engine.connect() as conn:
        return [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(
            sa.select(m.entity, m.kind, m.repair_status, sa.func.count())
            .where(m.report_id == report_id)
            .group_by(m.entity, m.kind, m.repair_status))]


def sample(engine: sa.Engine, report_id: int, limit: int) -> list[dict[str, Any]]:
    m = mismatches_table.c
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(m.entity, m.record_key, m.kind, m.fields, m.repair_status, m.repair_error)
            .where(m.report_id == report_id).order_by(m.id).limit(limit)).mappings()]


def id_ranges(engine: sa.Engine, report_id: int, size: int) -> list[tuple[int, int]]:
    """Mismatch id ranges [first, last] of about `size` rows each, for repair batches."""
    m = mismatches_table.c
    numbered = (sa.select(m.id, sa.func.row_number().over(order_by=m.id).label("n"))
                .where(m.report_id == report_id).subquery())
    with engine.connect() as conn:
        ids = conn.execute(sa.select(numbered.c.id).where(
            sa.or_((numbered.c.n - 1) % size == 0, numbered.c.n % size == 0,
                   numbered.c.id == sa.select(sa.func.max(m.id))
                   .where(m.report_id == report_id).scalar_subquery()))
            .order_by(numbered.c.id)).scalars().all()
    ranges: list[tuple[int, int]] = []
    for first_index in range(0, len(ids), 2):
        first = ids[first_index]
        last = ids[first_index + 1] if first_index + 1 < len(ids) else first
        ranges.append((first, last))
    return ranges


def mismatches_between(engine: sa.Engine, report_id: int, first: int,
                       last: int) -> list[MismatchRow]:
    m = mismatches_table.c
    with engine.connect() as conn:
        return [MismatchRow(r.id, r.entity, r.record_key, r.kind, r.fields, r.repair_status)
                for r in conn.execute(
                    sa.select(m.id, m.entity, m.record_key, m.kind, m.fields, m.repair_status)
                    .where(m.report_id == report_id, m.id.between(first, last))
                    .order_by(m.id))]


def set_repair_outcomes(conn: sa.Connection,
                        outcomes: Sequence[tuple[int, str, str | None]]) -> None:
    """(mismatch id, repair_status, repair_error) in one statement per batch: an update
    joined to the outcomes as arrays, not one update per row."""
    if not outcomes:
        return
    m = mismatches_table
    ids, statuses, errors = zip(*outcomes, strict=True)
    given = sa.func.unnest(
        sa.bindparam("ids", list(ids), type_=ARRAY(sa.BigInteger)),
        sa.bindparam("statuses", list(statuses), type_=ARRAY(sa.Text)),
        sa.bindparam("errors", list(errors), type_=ARRAY(sa.Text)),
    ).table_valued("id", "status", "error").render_derived(name="given")
    conn.execute(m.update().where(m.c.id == given.c.id)
                 .values(repair_status=given.c.status, repair_error=given.c.error))


def record_repair_outcomes(engine: sa.Engine, entity: EntityMapping,
                           outcomes: Sequence[tuple[int, str, str | None]],
                           repaired: Sequence[Any], now: datetime) -> list[Row]:
    """A repair group's outcomes and, where tracked, the sync status of the rows it
    repaired, in one transaction; returns the rows whose version the marks bumped
    (`mark_sync`)."""
    with engine.begin() as conn:
        set_repair_outcomes(conn, outcomes)
        return mark_sync(conn, entity, repaired, status="synced", at=now, error=None)


def repair_stop(engine: sa.Engine, report_id: int) -> dict[str, Any] | None:
    """Why the report's repair was stopped (`stop_repairs`), or None."""
    with engine.connect() as conn:
        details = conn.execute(sa.select(reports_table.c.details)
                               .where(reports_table.c.id == report_id)).scalar_one()
    stop = (details or {}).get("repair_stopped")
    return dict(stop) if stop else None


def stop_repairs(engine: sa.Engine, report_id: int, stop: dict[str, Any], *,
                 kinds: Sequence[str], error: str) -> int:
    """Record in the report row why its repair stopped (the first reason is kept; a lost
    connection anywhere is kept too) and fail the mismatches of `kinds` still waiting for
    repair with `error`; returns how many. One transaction: a batch that sees the reason
    finds those mismatches marked."""
    r, m = reports_table, mismatches_table
    with engine.begin() as conn:
        details = dict(conn.execute(sa.select(r.c.details).where(r.c.id == report_id)
                                    .with_for_update()).scalar_one() or {})
        first = details.get("repair_stopped")
        details["repair_stopped"] = stop if not first else {
            **first, "connection_lost": first["connection_lost"] or stop["connection_lost"]}
        conn.execute(r.update().where(r.c.id == report_id).values(details=details))
        return conn.execute(m.update().where(
            m.c.report_id == report_id, m.c.kind.in_(kinds), m.c.repair_status == "reported")
            .values(repair_status="failed", repair_error=error)).rowcount


def set_status_where(engine: sa.Engine, report_id: int, status: str, *,
                     kinds: Sequence[str]) -> int:
    m = mismatches_table
    with engine.begin() as conn:
        return conn.execute(m.update().where(m.c.report_id == report_id, m.c.kind.in_(kinds))
                            .values(repair_status=status)).rowcount
