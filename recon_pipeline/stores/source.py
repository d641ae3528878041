"""Reading the source of truth as the mapping sees it: streamed in merge-key order with a
server-side cursor, or looked up by key. Identifiers are always quoted by SQLAlchemy.

The merge key is the document key, or (parent key, element key) for embedded entities,
so that one sorted MongoDB cursor over the parent documents lines up with the rows.
Text keys sort with COLLATE "C": byte order, the order MongoDB and Python use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.model.normalize import ValueKind, is_key, key_of

Row = dict[str, Any]
RowView = sa.RowMapping


@dataclass(frozen=True, slots=True)
class SourceTable:
    """A lightweight, quoted view of the mapped table: only the columns we read."""

    entity: EntityMapping
    table: sa.TableClause

    @classmethod
    def of(cls, entity: EntityMapping) -> SourceTable:
        columns = entity.source_columns
        if entity.source.sync_tracking:
            tracking = entity.source.sync_tracking
            columns = (*columns, tracking.status, tracking.synced_at, tracking.error)
        return cls(entity, sa.table(entity.source.table,
                                    *(sa.column(c) for c in dict.fromkeys(columns))))

    def col(self, name: str) -> sa.ColumnClause[Any]:
        return self.table.c[name]

    def _ordered(self, name: str, kind: ValueKind) -> sa.ColumnElement[Any]:
        column = self.col(name)
        return column.collate("C") if kind is ValueKind.TEXT else column

    @property
    def merge_columns(self) -> list[sa.ColumnElement[Any]]:
        entity = self.entity
        key = self._ordered(entity.source.key, entity.key_kind)
        if entity.target.embedded is None:
            return [key]
        return [self._ordered(entity.target.embedded.parent_key, entity.parent_key_kind), key]

    @property
    def bound_column(self) -> sa.ColumnElement[Any]:
        """Chunks are bounded on the document key (the parent key when embedded)."""
        return self.merge_columns[0]

    def select_mapped(self) -> sa.Select[Any]:
        return sa.select(*(self.col(c) for c in self.entity.source_columns))

    def in_window(self, start: datetime | None, end: datetime | None) -> list[Any]:
        updated = self.col(self.entity.source.updated_at)
        clauses: list[Any] = []
        if start is not None:
            clauses.append(updated >= self._instant(start))
        if end is not None:
            clauses.append(updated < self._instant(end))
        return clauses

    def _instant(self, moment: datetime) -> datetime:
        """A `timestamp without time zone` column holds UTC: compare it with naive UTC, so
        no session TimeZone takes part in the comparison."""
        if self.entity.source.updated_at_has_time_zone or moment.tzinfo is None:
            return moment
        return moment.astimezone(UTC).replace(tzinfo=None)

    def in_bounds(self, lower: Any, upper: Any) -> list[Any]:
        clauses: list[Any] = []
        if lower is not None:
            clauses.append(self.bound_column > lower)
        if upper is not None:
            clauses.append(self.bound_column <= upper)
        return clauses


def row_columns(entity: EntityMapping) -> tuple[str, ...]:
    """The columns of a row of `stream_row_values`, in order: `source_columns`, once each."""
    return tuple(dict.fromkeys(entity.source_columns))


def _streamed(engine: sa.Engine, entity: EntityMapping, start: datetime | None,
              end: datetime | None, lower: Any, upper: Any, batch_size: int,
              ) -> Iterator[sa.CursorResult[Any]]:
    source = SourceTable.of(entity)
    query = (sa.select(*(source.col(c) for c in row_columns(entity)))
             .where(*source.in_window(start, end), *source.in_bounds(lower, upper))
             .order_by(*source.merge_columns))
    with engine.connect() as conn:
        yield conn.execution_options(stream_results=True, yield_per=batch_size).execute(query)


def stream_rows(engine: sa.Engine, entity: EntityMapping, *, start: datetime | None,
                end: datetime | None, lower: Any = None, upper: Any = None,
                batch_size: int = 5000) -> Iterator[Sequence[RowView]]:
    """Rows in merge-key order, in batches; memory is bounded by the batch. Rows are
    read-only mappings (copying each into a dict cost a tenth of a full scan)."""
    for result in _streamed(engine, entity, start, end, lower, upper, batch_size):
        yield from result.mappings().partitions()


def stream_row_values(engine: sa.Engine, entity: EntityMapping, *, start: datetime | None,
                      end: datetime | None, lower: Any = None, upper: Any = None,
                      batch_size: int = 5000) -> Iterator[Sequence[Sequence[Any]]]:
    """`stream_rows` as positional rows, values in `row_columns` order: what a full scan
    reads (a mapping per row costs more than comparing the row)."""
    for result in _streamed(engine, entity, start, end, lower, upper, batch_size):
        yield from stream_batches(result, batch_size)


def stream_batches(result: sa.Result[Any], batch_size: int) -> Iterator[Sequence[Sequence[Any]]]:
    """A result's rows as `stream_row_values` yields them."""
    return result.partitions(batch_size)


def sql_keys(entity: EntityMapping, keys: Sequence[Any]) -> list[Any]:
    """The keys the key column can hold, as it holds them (a UUID's canonical string from
    the audit trail becomes a UUID); a key of another type has no row and is dropped,
    never bound (`uuid = character varying`)."""
    typed = (key_of(k, entity.key_kind) for k in keys)
    return [k for k in typed if is_key(k, entity.key_kind)]


def fetch_rows(engine: sa.Engine, entity: EntityMapping, keys: Sequence[Any]) -> dict[Any, Row]:
    """The current source rows of `keys` (absent keys have no row)."""
    keys = sql_keys(entity, keys)
    if not keys:
        return {}
    source = SourceTable.of(entity)
    key_column = source.col(entity.source.key)
    query = source.select_mapped().where(key_column.in_(list(keys)))
    with engine.connect() as conn:
        return {row[entity.source.key]: dict(row)
                for row in conn.execute(query).mappings()}


def existing_merge_keys(engine: sa.Engine, entity: EntityMapping,
                        keys: Sequence[Any]) -> set[Any]:
    """Which of `keys` (element keys for embedded entities) have a source row, as merge
    keys: the key, or (parent, key)."""
    keys = sql_keys(entity, keys)
    if not keys:
        return set()
    source = SourceTable.of(entity)
    key_name = entity.source.key
    columns = [source.col(key_name)]
    if entity.target.embedded:
        columns.insert(0, source.col(entity.target.embedded.parent_key))
    query = sa.select(*columns).where(source.col(key_name).in_(list(keys)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {tuple(r) if entity.target.embedded else r[0] for r in rows}


def chunk_bounds(engine: sa.Engine, entity: EntityMapping, *, start: datetime | None,
                 end: datetime | None, chunk_size: int) -> tuple[int, list[Any]]:
    """(rows in the window, the bound-column values that split them into chunks of about
    `chunk_size` rows). Bounds never split one parent's elements."""
    source = SourceTable.of(entity)
    bound = source.bound_column.label("bound")
    numbered = (sa.select(bound, sa.func.row_number().over(order_by=source.merge_columns)
                          .label("n"))
                .where(*source.in_window(start, end)).subquery())
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(numbered)).scalar_one()
        cuts = conn.execute(sa.select(numbered.c.bound)
                            .where(numbered.c.n % chunk_size == 0)
                            .order_by(numbered.c.n)).scalars().all()
    bounds = list(dict.fromkeys(cuts))
    return int(total), bounds


def count_window(engine: sa.Engine, entity: EntityMapping, *, start: datetime | None,
                 end: datetime | None) -> int:
    """Rows whose `updated_at` is in the window: read from the `updated_at` index when
    the table has one (`db init` creates it), never the whole table's rows."""
    source = SourceTable.of(entity)
    query = sa.select(sa.func.count()).select_from(source.table).where(
        *source.in_window(start, end))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def estimate_rows(engine: sa.Engine, entity: EntityMapping) -> int | None:
    """PostgreSQL's own estimate of the table's rows, from the catalog (no scan): the last
    ANALYZE's rows per page times the pages the table holds now, as the planner scales
    it. None when the table was never analysed (or is not a table the catalog sizes)."""
    query = sa.text(
        "select c.reltuples, c.relpages,"
        " pg_relation_size(c.oid) / current_setting('block_size')::bigint"
        " from pg_class c where c.oid = to_regclass(quote_ident(:t))")
    with engine.connect() as conn:
        found = conn.execute(query, {"t": entity.source.table}).first()
    if found is None or found[0] < 0:
        return None
    tuples, pages, pages_now = float(found[0]), int(found[1]), int(found[2] or 0)
    if pages > 0:
        return round(tuples / pages * pages_now)
    return None if pages_now > 0 else round(tuples)  # analysed empty, filled since: unknown


def count_rows_upto(engine: sa.Engine, entity: EntityMapping, limit: int) -> int:
    """The table's rows, counted up to `limit`: a scan that stops there, so its cost is
    bounded by `limit` rows whatever the table holds."""
    source = SourceTable.of(entity)
    first = sa.select(sa.literal(1)).select_from(source.table).limit(limit).subquery()
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(first)).scalar_one())


def updated_at_index_missing(engine: sa.Engine, entity: EntityMapping) -> bool:
    """Whether no valid index of the table leads with the mapped `updated_at` column: a
    windowed run then reads the whole table on every run. False for a relation that is
    not a plain or partitioned table (a view: its tables' indexes serve it, or not)."""
    query = sa.text(
        "select c.relkind in ('r', 'p') and not exists ("
        "  select 1 from pg_index i join pg_attribute a"
        "    on a.attrelid = i.indrelid and a.attnum = i.indkey[0]"
        "  where i.indrelid = c.oid and i.indisvalid and a.attname = :col)"
        " from pg_class c where c.oid = to_regclass(quote_ident(:t))")
    with engine.connect() as conn:
        return bool(conn.execute(query, {"t": entity.source.table,
                                         "col": entity.source.updated_at}).scalar())


def mark_sync(conn: sa.Connection, entity: EntityMapping, keys: Sequence[Any], *,
              status: str, at: datetime | None, error: str | None) -> list[Row]:
    """Record a delivery outcome in the entity's sync_tracking columns, if it has them.

    Returns the marked rows whose `updated_at` the marks changed (a trigger that sets it on
    every update is common), as they are now, mapped columns only: the target must be given
    that version too, or the marks would make the next run repair these rows again."""
    tracking = entity.source.sync_tracking
    if tracking is None or not keys:
        return []
    source = SourceTable.of(entity)
    key, updated = source.col(entity.source.key), source.col(entity.source.updated_at)
    # The versions before the marks, read in the same statement (RETURNING sees only after).
    before = sa.select(key.label("k"), updated.label("v")).where(key.in_(list(keys))).cte()
    columns = entity.source_columns
    marked = conn.execute(
        sa.update(source.table)
        .where(key == before.c.k)
        .values({tracking.status: status, tracking.synced_at: at, tracking.error: error})
        .returning(*(source.col(c) for c in columns), before.c.v)).all()
    position = columns.index(entity.source.updated_at)
    return [dict(zip(columns, row[:-1], strict=True)) for row in marked
            if row[position] != row[-1]]
