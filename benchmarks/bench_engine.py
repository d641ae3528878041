"""The engine's own CPU (SPEC 10), fed rows already read: no server in the loop.

The demo `incoming_emails` entity of the packaged mapping (int key, text, timestamptz,
numeric as Decimal128, NULLs), its source rows as psycopg delivers them (Decimal,
tz-aware datetimes with microseconds, session TimeZone UTC) wrapped by SQLAlchemy as
`stream_rows` wraps them, and the agreeing documents as pymongo delivers them (BSON
round trip with the project's codec options: Decimal128, tz-aware datetimes truncated to
milliseconds). Both go through `diff_sorted`, the function a full-scan chunk calls; CPU
time is `time.process_time()`, so the figure is rows/s per core.

The data set is the size of what the path holds at once: `prefetched` reads up to four
batches of 5000 ahead on each side, so a full scan compares rows and documents decoded
moments before, 20k of each. The same comparison over 100k rows all held in memory
is slower per row (memory, not the engine: the code and values are the same) and is
printed for information.

    python -m benchmarks.bench_engine [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bson
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData

from benchmarks.verdict import info, verdict
from recon_pipeline.engine.diff import MismatchKind, ScanTally, diff_sorted
from recon_pipeline.engine.projection import nest, projected_fields, row_version
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import EntityMapping, bind_mapping, read_mapping_file
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.schema import metadata
from recon_pipeline.stores.source import stream_batches
from recon_pipeline.stores.target import VERSION_FIELD

ENTITY = "incoming_emails"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
BATCH = 5000
TARGET_K = 150


def demo_entity(name: str = ENTITY) -> EntityMapping:
    """The packaged mapping bound to the schema `db init` creates (no server needed)."""
    catalog = {table.name: {column.name: column.type for column in table.columns}
               for table in metadata.tables.values()}
    return bind_mapping(read_mapping_file(packaged_mapping_path()), catalog).entity(name)


def source_tuples(entity: EntityMapping, count: int) -> list[tuple[Any, ...]]:
    """Rows as psycopg returns them, in `entity.source_columns` order (the seed's values of
    bench_reconcile, with microseconds in the timestamps)."""
    columns = entity.source_columns
    base = NOW - timedelta(hours=1)
    rows = []
    for i in range(1, count + 1):
        values = {
            "id": i, "client_ref": f"C{i % 100_000:06d}", "from_address": f"n{i}@x.example",
            "subject": f"Statement {i}",
            "received_at": base - timedelta(seconds=i, microseconds=(i * 7919) % 1_000_000),
            "processing_status": ("new", "parsed", "needs_review")[i % 3],
            "extracted_amount": None if i % 10 == 0 else Decimal(i % 100_000) / 100,
            "updated_at": base - timedelta(seconds=i % 86_400, microseconds=i % 1_000_000),
        }
        rows.append(tuple(values[c] for c in columns))
    return rows


def documents_of(entity: EntityMapping, tuples: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The agreeing documents, exactly as pymongo delivers them (a BSON round trip with the
    project's client options), written as the seed writes them."""
    options = create_client("mongodb://localhost:1/", connect=False).codec_options
    columns = entity.source_columns
    documents = []
    for values in tuples:
        row = dict(zip(columns, values, strict=True))
        document = {"_id": row[entity.source.key], **nest(projected_fields(entity, row)),
                    VERSION_FIELD: row_version(entity, row)}
        documents.append(bson.decode(bson.encode(document), options))
    return documents


def row_batches(entity: EntityMapping, tuples: Sequence[tuple[Any, ...]]
                ) -> Iterator[Sequence[Any]]:
    """The tuples wrapped as `stream_rows` wraps a cursor's (the same SQLAlchemy result)."""
    result: IteratorResult[Any] = IteratorResult(
        SimpleResultMetaData(list(entity.source_columns)), iter(tuples))
    return stream_batches(result, BATCH)


def document_batches(documents: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(documents), BATCH):
        yield list(documents[start:start + BATCH])


def differing(entity: EntityMapping, documents: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """The same documents, each with a different subject."""
    return [{**d, "subject": f"{d['subject']}!"} for d in documents]


def cpu_rate(entity: EntityMapping, tuples: Sequence[tuple[Any, ...]],
             documents: Sequence[dict[str, Any]], repeat: int) -> tuple[float, dict[str, int]]:
    """(rows/s per core, mismatches by kind), best of `repeat` passes."""
    window = RunWindow(NOW - timedelta(days=400), NOW, full_scan=True)
    best, kinds = float("inf"), dict[str, int]()
    for _ in range(repeat):
        tally = ScanTally()
        kinds = {}
        started = time.process_time()
        for item in diff_sorted(entity, row_batches(entity, tuples),
                                document_batches(documents), window, tally):
            kind = getattr(item, "kind", MismatchKind.ORPHAN_IN_MONGO)
            kinds[kind.value] = kinds.get(kind.value, 0) + 1
        best = min(best, time.process_time() - started)
        assert tally.checked == len(tuples), tally
    return len(tuples) / best, kinds


def row_wrap_rate(entity: EntityMapping, tuples: Sequence[tuple[Any, ...]], repeat: int) -> float:
    """Rows/s of the SQLAlchemy wrapping alone (`stream_batches` over tuples already
    fetched): the share of the figure that is not the engine's comparison."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _batch in row_batches(entity, tuples):
            pass
        best = min(best, time.process_time() - started)
    return len(tuples) / best


WORKING_SET = 20_000  # rows: the read-ahead of both sides (4 batches of BATCH)
HELD = 100_000


def run(quick: bool = False) -> list[str]:
    count = WORKING_SET
    entity = demo_entity()
    tuples = source_tuples(entity, count)
    documents = documents_of(entity, tuples)
    repeat = 2 if quick else 5
    agree, kinds = cpu_rate(entity, tuples, documents, repeat)
    assert not kinds, f"agreeing rows judged different: {kinds}"
    differ, kinds = cpu_rate(entity, tuples, differing(entity, documents), repeat)
    assert kinds == {MismatchKind.FIELD_MISMATCH.value: count}, kinds
    lines = [
        verdict(f"engine CPU, rows that agree [{count} rows]", agree / 1000, TARGET_K,
                unit="k rows/s", digits=1),
        info(f"engine CPU, rows that differ in one field [{count} rows]",
             f"{differ / 1000:.1f}k rows/s"),
        info("engine CPU, of which SQLAlchemy's row wrapping",
             f"{100 * agree / row_wrap_rate(entity, tuples, repeat):.0f}% of the time"),
    ]
    if not quick:
        held = source_tuples(entity, HELD)
        rate, kinds = cpu_rate(entity, held, documents_of(entity, held), 2)
        assert not kinds, kinds
        lines.append(info(f"engine CPU, rows that agree, all held in memory [{HELD} rows]",
                          f"{rate / 1000:.1f}k rows/s"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 100k pass")
    args = parser.parse_args(argv)
    for line in run(quick=args.quick):
        print(line, flush=True)


if __name__ == "__main__":
    main()
