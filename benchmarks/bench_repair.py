"""Bulk repair against the floor of the work it must do (SPEC 10), in one process run:

- repair: a `reconciliation_job` run (packaged mapping, default settings, full scan of
  the demo `incoming_emails` entity) that finds and repairs `drifted` documents. Its
  repair time is taken from the run's own event log: the `repair_batch_op` steps
  (STEP_START to STEP_SUCCESS) plus the `decide_repairs_op` step (the limit check and the
  split into batches: work a run does only because it repairs);
- floor: the same documents drifted, then per group of `GROUP_SIZE` (as repair groups
  them) the raw `$in` read of their targets (batches of `IN_BATCH`), one raw unordered
  `bulk_write` of the very update ops repair makes, and the `$in` read again;
- one `update_one` per document, on a sample spread like the drift.

Each of the three is measured `REPEATS` times, interleaved (floor, one per document,
run; again), and the fastest of each counts: the server's speed drifts during a bench,
and a single run met by a slow moment was compared with the better of two floors.

    python -m benchmarks.bench_repair [--quick] [--rows N --drifted N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pymongo import UpdateOne
from pymongo.collection import Collection

from benchmarks.paths import run_in_process
from benchmarks.seed import ENTITY, seed_emails
from benchmarks.servers import BenchServers, bench_servers
from benchmarks.verdict import info, verdict
from recon_pipeline.engine.projection import Presence, WriteOp, upsert_ops
from recon_pipeline.engine.repair import GROUP_SIZE
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.source import fetch_rows
from recon_pipeline.stores.target import (
    IN_BATCH,
    KeyLayouts,
    fetch_targets,
    projection_of,
)

PER_DOC_SAMPLE = 1000
REPEATS = 2
SIZES = {False: (100_000, 10_000), True: (20_000, 2_000)}  # quick -> (rows, drifted)


def drifted_keys(rows: int, drifted: int) -> list[int]:
    """`drifted` keys spread evenly over the table (repair reads them by key)."""
    step = rows // drifted
    return list(range(1, rows + 1, step))[:drifted]


def drift(collection: Collection[dict[str, Any]], keys: Sequence[int]) -> None:
    for start in range(0, len(keys), 1000):
        collection.bulk_write([UpdateOne({"_id": key}, {"$set": {"subject": "drift"}})
                               for key in keys[start:start + 1000]], ordered=False)


def repair_ops(engine: sa.Engine, collection: Collection[dict[str, Any]],
               entity: EntityMapping, keys: Sequence[int]) -> list[WriteOp]:
    """The update ops repair makes for `keys` (with the target as read before writing)."""
    layout = KeyLayouts(collection.database).of(entity)
    ops: list[WriteOp] = []
    for start in range(0, len(keys), GROUP_SIZE):
        group = keys[start:start + GROUP_SIZE]
        rows = fetch_rows(engine, entity, group)
        seen = fetch_targets(collection.database, entity, group)
        ops += [op for key in group for op in upsert_ops(
            entity, rows[key], Presence.PRESENT, layout.forms, seen.record_at(key))]
    return ops


def _read(collection: Collection[dict[str, Any]], entity: EntityMapping,
          keys: Sequence[int]) -> int:
    count = 0
    for start in range(0, len(keys), IN_BATCH):
        count += len(list(collection.find({"_id": {"$in": list(keys[start:start + IN_BATCH])}},
                                          projection_of(entity))))
    return count


def floor_seconds(collection: Collection[dict[str, Any]], entity: EntityMapping,
                  keys: Sequence[int], ops: Sequence[WriteOp]) -> float:
    """Raw read, bulk_write, read again, group after group as repair goes."""
    started = time.perf_counter()
    for start in range(0, len(keys), GROUP_SIZE):
        group = keys[start:start + GROUP_SIZE]
        assert _read(collection, entity, group) == len(group)
        result = collection.bulk_write(list(ops[start:start + GROUP_SIZE]), ordered=False)
        assert result.matched_count == len(group), result.bulk_api_result
        _read(collection, entity, group)
    return time.perf_counter() - started


def per_doc_seconds(collection: Collection[dict[str, Any]], ops: Sequence[WriteOp]) -> float:
    started = time.perf_counter()
    for op in ops:
        collection.update_one(op._filter, op._doc, upsert=True)  # type: ignore[union-attr]
    return time.perf_counter() - started


def measure(servers: BenchServers, rows: int, drifted: int) -> dict[str, Any]:
    """Floor, per-document writes and the run, `REPEATS` times in turn; the fastest
    of each."""
    with servers.fresh_database() as (engine, pg_url, db_name):
        client = create_client(servers.mongodb_url)
        try:
            seed_emails(engine, client[db_name], 1, rows)
            entity = load_mapping(packaged_mapping_path(), engine).entity(ENTITY)
            collection = client[db_name][entity.target.collection]
            keys = drifted_keys(rows, drifted)
            drift(collection, keys)
            ops = repair_ops(engine, collection, entity, keys)
            step = max(len(ops) // PER_DOC_SAMPLE, 1)
            sample, sample_keys = ops[::step], keys[::step]
            floors: list[float] = []
            per_doc: list[float] = []
            runs: list[dict[str, float]] = []
            for _ in range(REPEATS):
                drift(collection, keys)
                floors.append(floor_seconds(collection, entity, keys, ops))
                drift(collection, sample_keys)
                per_doc.append(per_doc_seconds(collection, sample))
                drift(collection, keys)
                job = run_in_process(servers.target(pg_url, db_name), entities=[ENTITY],
                                     full_scan=True)
                report = job.report
                assert (report["field_mismatches"], report["repaired"]) == (
                    drifted, drifted), report
                steps, decide = job.step("repair_batch_op"), job.step("decide_repairs_op")
                runs.append({"run_seconds": job.seconds, "repair_steps": steps,
                             "decide": decide, "repair": steps + decide})
            fastest = min(runs, key=lambda r: r["repair"])
            return {"rows": rows, "drifted": drifted, **fastest, "floors": floors,
                    "repairs": [r["repair"] for r in runs],
                    "per_doc_rate": len(sample) / min(per_doc)}
        finally:
            client.close()


def report_lines(r: dict[str, Any]) -> list[str]:
    n, docs = int(r["rows"]), int(r["drifted"])
    floor = min(r["floors"])
    repair_rate, floor_rate = docs / r["repair"], docs / floor
    label = f"[{n} rows, {docs} drifted]"
    return [
        info(f"bulk repair {label}",
             f"repair_batch_op steps {r['repair_steps']:.2f} s + decide_repairs_op "
             f"{r['decide']:.2f} s = {repair_rate:.0f} docs/s (best of "
             f"{', '.join(f'{t:.2f}' for t in r['repairs'])} s); floor (raw $in read, "
             f"bulk_write, $in read) {floor:.2f} s = {floor_rate:.0f} docs/s (best of "
             f"{', '.join(f'{f:.2f}' for f in r['floors'])} s); one update_one per doc "
             f"{r['per_doc_rate']:.0f} docs/s; whole run {r['run_seconds']:.1f} s"),
        verdict(f"bulk repair / its floor {label}", repair_rate / floor_rate, 0.8),
        verdict(f"bulk repair / one update_one per document {label}",
                repair_rate / r["per_doc_rate"], 1),
    ]


def run(servers: BenchServers, quick: bool = False) -> list[str]:
    return report_lines(measure(servers, *SIZES[quick]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k rows, 2,000 drifted")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--drifted", type=int)
    args = parser.parse_args(argv)
    rows, drifted = SIZES[args.quick]
    with bench_servers() as servers:
        figures = measure(servers, args.rows or rows, args.drifted or drifted)
        for line in report_lines(figures):
            print(line, flush=True)


if __name__ == "__main__":
    main()

