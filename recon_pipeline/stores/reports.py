"""The audit trail: `reconciliation_reports` and `reconciliation_mismatches` rows."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.stores.schema import reconciliation_mismatches as mismatches_table
from recon_pipeline.stores.schema import reconciliation_reports as reports_table
from recon_pipeline.stores.source import Row, mark_sync

if TYPE_CHECKING:
    import pandas as pd

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


# --- What the operator reads: the drift by field, the mismatches line by line, history ---

MISMATCH_LINE_COLUMNS = ("entity", "key", "kind", "field", "source_value", "target_value",
                         "repair_status", "repair_error")


@dataclass(frozen=True, slots=True)
class MismatchLine:
    """One mismatch as an operator reads it: a field mismatch gives one line per drifted
    field; a missing or orphan record one line with no field. Values are JSON text
    (`null`: a NULL or absent value; `"5"` a string, `5` a number)."""

    entity: str
    key: str
    kind: str
    field: str
    source_value: str
    target_value: str
    repair_status: str
    repair_error: str

    def as_tuple(self) -> tuple[str, ...]:
        return (self.entity, self.key, self.kind, self.field, self.source_value,
                self.target_value, self.repair_status, self.repair_error)


def _fields_object(fields: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """`fields`, or `{}` where it holds no object (JSON `null` for a missing or orphan
    record): what the set-returning JSON functions may be given."""
    return sa.case((sa.func.jsonb_typeof(fields) == "object", fields),
                   else_=sa.text("'{}'::jsonb"))


def _mismatch_lines_query(report_id: int, limit: int | None = None) -> sa.Select[Any]:
    t = mismatches_table
    chosen = sa.select(t).where(t.c.report_id == report_id)
    if limit is not None:
        # Every mismatch gives at least one line, so the first `limit` lines come from the
        # first `limit` mismatches: only theirs are expanded and sorted.
        chosen = chosen.order_by(t.c.id).limit(limit)
    m = chosen.subquery("m")
    drifted = sa.func.jsonb_each(_fields_object(m.c.fields)).table_valued(
        sa.column("key", sa.Text), sa.column("value", JSONB)).lateral("drifted")
    query = (sa.select(m.c.entity, m.c.record_key, m.c.kind, drifted.c.key.label("field"),
                       drifted.c.value["source"].label("source_value"),
                       drifted.c.value["target"].label("target_value"),
                       m.c.repair_status, m.c.repair_error)
             .select_from(m.outerjoin(drifted, sa.true()))
             .order_by(m.c.id, drifted.c.key))
    return query if limit is None else query.limit(limit)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _line(row: sa.Row[Any]) -> MismatchLine:
    return MismatchLine(row.entity, row.record_key, row.kind, row.field or "",
                        _json_text(row.source_value) if row.field else "",
                        _json_text(row.target_value) if row.field else "",
                        row.repair_status, row.repair_error or "")


def mismatch_lines(engine: sa.Engine, report_id: int,
                   limit: int | None = None) -> list[MismatchLine]:
    """The first `limit` lines (all when None) of the report's mismatches, in id order."""
    with engine.connect() as conn:
        return [_line(row) for row in conn.execute(
            _mismatch_lines_query(report_id, limit))]


def iter_mismatch_lines(engine: sa.Engine, report_id: int,
                        batch: int = 5000) -> Iterator[MismatchLine]:
    """Every line of the report's mismatches, streamed (a server-side cursor): a report
    with a million mismatches is listed in flat memory."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(
            _mismatch_lines_query(report_id))
        for row in result:
            yield _line(row)


def report_exists(engine: sa.Engine, report_id: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.literal(1)).where(
            reports_table.c.id == report_id)).first() is not None


def field_drift(engine: sa.Engine, report_id: int) -> list[tuple[str, str, int]]:
    """(entity, field, mismatches) over the report's field mismatches: which target
    fields drift, most drifted first within each entity."""
    m = mismatches_table.c
    field = sa.func.jsonb_object_keys(_fields_object(m.fields)).table_valued(
        "name").lateral("field")
    count = sa.func.count().label("mismatches")
    with engine.connect() as conn:
        return [(r.entity, r.name, int(r.mismatches)) for r in conn.execute(
            sa.select(m.entity, field.c.name, count)
            .select_from(mismatches_table.join(field, sa.true()))
            .where(m.report_id == report_id, m.kind == "field_mismatch")
            .group_by(m.entity, field.c.name)
            .order_by(m.entity, count.desc(), field.c.name))]


HISTORY_COLUMNS = ("id", "records_checked", "mismatches_found")


def finished_history(engine: sa.Engine, report_id: int, *, full_scan: bool,
                     last: int) -> pd.DataFrame:
    """The `last` most recent finished reports of the same kind (full scan or windowed)
    as a DataFrame of HISTORY_COLUMNS, the report `report_id` itself left out."""
    import pandas as pd  # only the report step needs it: every other import stays light

    r = reports_table.c
    query = (sa.select(*(r[name] for name in HISTORY_COLUMNS))
             .where(r.finished_at.is_not(None), r.full_scan.is_(full_scan),
                    r.id != report_id)
             .order_by(r.started_at.desc(), r.id.desc()).limit(last))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).all(), columns=list(HISTORY_COLUMNS))
