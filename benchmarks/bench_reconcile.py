"""Reconcile benchmarks (SPEC 10), each ratio measured within one run on the same data:

(a) reconcile throughput (a whole `reconciliation_job` run, default settings) / raw
    throughput of just reading both sides
(b) peak RSS at the largest size / at the smallest, and the largest in MB
(c) speed-up over checking row by row (one select and one find_one per row)
(d) bulk repair / raw bulk_write of the same documents, and / one update_one per document

The demo domain's `incoming_emails` entity (a document entity), full scan. The step-level
figures (access paths, repair) call the engine functions the ops call, on one chunk.
Beside the ratios, the access paths: a sparse and a dense window read both ways (`$in`
lookups, one sorted cursor per side), with the path the planner picks for each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pymongo import MongoClient
from pymongo.database import Database

from benchmarks.servers import BenchServers, bench_servers, run_job
from recon_pipeline.engine.diff import judge
from recon_pipeline.engine.extract import AccessPath, diff_chunk, plan_chunks
from recon_pipeline.engine.projection import (
    Presence,
    nest,
    projected_fields,
    row_version,
    upsert_ops,
)
from recon_pipeline.engine.repair import GROUP_SIZE, repair_batch
from recon_pipeline.engine.run_steps import (
    RunScope,
    begin_run,
    decide_repairs,
    safe_diff_chunk,
)
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.source import stream_rows
from recon_pipeline.stores.target import (
    VERSION_FIELD,
    ensure_target_indexes,
    fetch_targets,
    records_of,
)

ENTITY = "incoming_emails"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
ROW_BY_ROW_SAMPLE = 2000
REPAIR_DOCS = 10_000
PER_DOC_SAMPLE = 1000
WINDOW_SHARES = (0.01, 0.3)  # a sparse and a dense window, as shares of a day


def _config(engine: sa.Engine, rows: int) -> ReconConfig:
    config = load_mapping(packaged_mapping_path(), engine)
    return replace(config, settings=replace(config.settings, chunk_size=rows + 1,
                                            repair_limit=rows + 1))


def seed(engine: sa.Engine, client: MongoClient[Any], db_name: str, rows: int) -> None:
    """`rows` source rows and their consistent documents (written in bulk inserts)."""
    with engine.begin() as conn:
        conn.execute(sa.text("""
            insert into incoming_emails (id, client_ref, from_address, subject, received_at,
                processing_status, extracted_amount, created_at, updated_at)
            select i, 'C' || lpad((i % 100000)::text, 6, '0'), 'n' || i || '@x.example',
                   'Statement ' || i, :t - make_interval(secs => i),
                   (array['new','parsed','needs_review'])[1 + i % 3],
                   case when i % 10 = 0 then null else (i % 100000) / 100.0 end,
                   :t - make_interval(secs => i), :t - make_interval(secs => i % 86400)
            from generate_series(1, :n) i"""), {"n": rows, "t": NOW - timedelta(hours=1)})
        conn.execute(sa.text("analyze incoming_emails"))
    entity = _config(engine, rows).entity(ENTITY)
    collection = client[db_name][entity.target.collection]
    for batch in stream_rows(engine, entity, start=None, end=None, batch_size=5000):
        collection.insert_many(
            [{"_id": row["id"], **nest(projected_fields(entity, row)),
              VERSION_FIELD: row_version(entity, row)} for row in batch], ordered=False)


def window() -> RunWindow:
    return RunWindow(NOW - timedelta(days=400), NOW, full_scan=True)


def raw_read_rate(engine: sa.Engine, client: MongoClient[Any], db_name: str,
                  config: ReconConfig) -> float:
    """Both sides read in lockstep, as the reconcile reads them, with no comparison."""
    entity = config.entity(ENTITY)
    started = time.perf_counter()
    rows = chain.from_iterable(stream_rows(engine, entity, start=None, end=None))
    cursor = client[db_name][entity.target.collection].find(
        {}, {f.target: 1 for f in entity.compared_fields} | {VERSION_FIELD: 1},
        sort=[("_id", 1)], batch_size=5000)
    count = sum(1 for _ in zip(rows, cursor, strict=False))
    return count / (time.perf_counter() - started)


def reconcile_rate(pg_url: str, mongo_url: str, db_name: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    report = run_job(pg_url, mongo_url, db_name, entities=[ENTITY], full_scan=True,
                     window_start=window().start, window_end=window().end)
    return report["records_checked"] / (time.perf_counter() - started), report


def access_path_rates(engine: sa.Engine, db: Database[dict[str, Any]],
                      config: ReconConfig) -> list[dict[str, Any]]:
    """For windows of the last 1 % and 30 % of a day (the seed spreads `updated_at` over one):
    rows in the window, the planner's path, rows/s each way.
    With the `updated_at` index `db init` creates (the lookup path's orphan query uses it),
    dropped afterwards so the other figures are measured as before."""
    collection = db[config.entity(ENTITY).target.collection]
    [index] = ensure_target_indexes(db, [config.entity(ENTITY)])
    report_id = begin_run(engine, RunScope("bench-access", window()), NOW)
    newest = NOW - timedelta(hours=1)  # the seed's updated_at: one row per second before it
    results = []
    try:
        for share in WINDOW_SHARES:
            span = RunWindow(newest - timedelta(seconds=86_400 * share),
                             newest + timedelta(seconds=1))
            [chunk] = plan_chunks(engine, config, span, [ENTITY])
            figures: dict[str, Any] = {"share": share, "picked": chunk.access.value}
            for access in AccessPath:
                started = time.perf_counter()
                result = diff_chunk(engine, db, config, report_id, span,
                                    replace(chunk, access=access), NOW)
                figures[access.value] = result.records_checked / (time.perf_counter() - started)
                assert (result.missing_in_mongo, result.field_mismatches,
                        result.orphans_in_mongo) == (0, 0, 0), result
                figures["rows"] = result.records_checked
            results.append(figures)
    finally:
        collection.drop_index(index.split(".", 1)[1])
    return results


def row_by_row_rate(engine: sa.Engine, client: MongoClient[Any], db_name: str,
                    config: ReconConfig, rows: int) -> float:
    entity = config.entity(ENTITY)
    collection = client[db_name][entity.target.collection]
    columns = ", ".join(f'"{c}"' for c in entity.source_columns)
    query = sa.text(f"select {columns} from incoming_emails where id = :id")
    step = max(rows // ROW_BY_ROW_SAMPLE, 1)
    started = time.perf_counter()
    with engine.connect() as conn:
        for key in range(1, rows + 1, step):
            row = dict(conn.execute(query, {"id": key}).mappings().one())
            doc = collection.find_one({"_id": key})
            judge(entity, row, records_of(entity, doc)[0] if doc else None)
    return len(range(1, rows + 1, step)) / (time.perf_counter() - started)


def _corrupt(client: MongoClient[Any], db_name: str, keys: list[int]) -> None:
    client[db_name][ENTITY].update_many({"_id": {"$in": keys}}, {"$set": {"subject": "drift"}})


def repair_rates(engine: sa.Engine, client: MongoClient[Any], db_name: str,
                 config: ReconConfig) -> tuple[float, float, float, float]:
    """(bulk repair docs/s, raw bulk_write docs/s, re-read by key docs/s, one update_one
    per doc docs/s)."""
    entity = config.entity(ENTITY)
    keys = list(range(1, REPAIR_DOCS + 1))
    db = client[db_name]
    for start in range(0, len(keys), 1000):
        _corrupt(client, db_name, keys[start:start + 1000])
    report_id = begin_run(engine, RunScope("bench-repair", window()), NOW)
    sparse = RunWindow(NOW - timedelta(days=400), NOW, full_scan=True)
    for chunk in plan_chunks(engine, config, sparse, [ENTITY]):
        safe_diff_chunk(engine, db, config, report_id, sparse, chunk, NOW)
    started = time.perf_counter()
    for batch in decide_repairs(engine, config, report_id, dry_run=False).batches:
        repair_batch(engine, db, config, report_id, batch, NOW)
    repair = REPAIR_DOCS / (time.perf_counter() - started)

    for start in range(0, len(keys), 1000):
        _corrupt(client, db_name, keys[start:start + 1000])
    rows = [row for batch in stream_rows(engine, entity, start=None, end=None, upper=None)
            for row in batch if row["id"] <= REPAIR_DOCS]
    ops = [op for row in rows for op in upsert_ops(entity, row, Presence.PRESENT)]
    started = time.perf_counter()
    for start in range(0, len(ops), 1000):
        db[ENTITY].bulk_write(ops[start:start + 1000], ordered=False)
    raw = len(ops) / (time.perf_counter() - started)

    started = time.perf_counter()
    for start in range(0, len(keys), GROUP_SIZE):
        fetch_targets(db, entity, keys[start:start + GROUP_SIZE])
    reread = len(keys) / (time.perf_counter() - started)

    sample = rows[:PER_DOC_SAMPLE]
    _corrupt(client, db_name, [r["id"] for r in sample])
    started = time.perf_counter()
    for row in sample:
        op = upsert_ops(entity, row, Presence.PRESENT)[0]
        db[ENTITY].update_one(op._filter, op._doc, upsert=True)  # type: ignore[attr-defined]
    per_doc = len(sample) / (time.perf_counter() - started)
    return repair, raw, reread, per_doc


def peak_rss_mb(servers: BenchServers, pg_url: str, db_name: str, rows: int) -> float:
    """Peak RSS of a fresh process that only runs the reconcile."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_reconcile", "--rss-probe", pg_url,
         servers.mongodb_url, db_name, str(rows)],
        check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def _rss_probe(pg_url: str, mongo_url: str, db_name: str, rows: int) -> None:
    reconcile_rate(pg_url, mongo_url, db_name)
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb()}))


def own_peak_rss_mb() -> float:
    """This process's own peak RSS. Linux carries `ru_maxrss` across exec: a child
    spawned by a process that once held more memory reports the parent's peak. The
    high-water mark in /proc/self/status belongs to the process's own address space."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kilobytes = next(line.split()[1] for line in status.splitlines()
                     if line.startswith("VmHWM:"))
    return int(kilobytes) / 1024


def measure(servers: BenchServers, rows: int) -> dict[str, Any]:
    with servers.fresh_database() as (engine, pg_url, db_name):
        client = create_client(servers.mongodb_url)
        seed(engine, client, db_name, rows)
        config = _config(engine, rows)
        raw = raw_read_rate(engine, client, db_name, config)
        rate, counts = reconcile_rate(pg_url, servers.mongodb_url, db_name)
        assert counts["records_checked"] == rows and counts["mismatches_found"] == 0, counts
        access = access_path_rates(engine, client[db_name], config)
        rss = peak_rss_mb(servers, pg_url, db_name, rows)
        row_rate = row_by_row_rate(engine, client, db_name, config, rows)
        figures = {"rows": rows, "raw_read_rate": raw, "reconcile_rate": rate,
                   "row_by_row_rate": row_rate, "peak_rss_mb": rss, "access": access}
        if rows >= REPAIR_DOCS:
            repair, raw_bulk, reread, per_doc = repair_rates(engine, client, db_name, config)
            figures |= {"repair_rate": repair, "raw_bulk_rate": raw_bulk,
                        "reread_rate": reread, "per_doc_rate": per_doc}
        client.close()
        return figures


def report_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        n = int(r["rows"])
        lines.append(f"[{n} rows] reconcile {r['reconcile_rate']:.0f} rows/s, raw read "
                     f"{r['raw_read_rate']:.0f} rows/s, row-by-row {r['row_by_row_rate']:.0f}"
                     f" rows/s, peak RSS {r['peak_rss_mb']:.0f} MB")
        lines.append(f"(a) [{n} rows] reconcile / raw read both sides: "
                     f"{r['reconcile_rate'] / r['raw_read_rate']:.2f}x (target >= 0.8)")
        for a in r["access"]:
            lines.append(f"access [{n} rows] window of {a['rows']} rows "
                         f"({a['rows'] / n:.0%} of the table): "
                         f"$in lookups {a['lookup']:.0f} rows/s, sorted scan {a['scan']:.0f} "
                         f"rows/s; the planner picks {a['picked']}")
        lines.append(f"(c) [{n} rows] speed-up over row by row: "
                     f"{r['reconcile_rate'] / r['row_by_row_rate']:.1f}x (target >= 10)")
        if "repair_rate" in r:
            lines.append(f"(d) [{n} rows] bulk repair {r['repair_rate']:.0f} docs/s / raw "
                         f"bulk_write {r['raw_bulk_rate']:.0f} docs/s: "
                         f"{r['repair_rate'] / r['raw_bulk_rate']:.2f}x (target >= 0.8); / one "
                         f"update_one per doc {r['per_doc_rate']:.0f} docs/s: "
                         f"{r['repair_rate'] / r['per_doc_rate']:.1f}x (target > 1)")
            # Repair must read every target before writing and again after: on this
            # server, that alone bounds the first ratio, whatever the client does.
            bound = 1 / (1 + 2 * r["raw_bulk_rate"] / r["reread_rate"])
            lines.append(f"(d) [{n} rows] re-read by key {r['reread_rate']:.0f} docs/s: "
                         f"raw bulk_write plus the two re-reads SPEC 6 requires, "
                         f"no client work at all, would reach {bound:.2f}x")
    small, large = results[0], results[-1]
    if len(results) > 1:
        lines.append(f"(b) peak RSS {int(large['rows'])} rows / {int(small['rows'])} rows: "
                     f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x (target <= 1.5); "
                     f"at {int(large['rows'])} rows {large['peak_rss_mb']:.0f} MB "
                     "(target < 300)")
    return lines


def run(servers: BenchServers, sizes: tuple[int, ...] = (100_000, 1_000_000)) -> list[str]:
    return report_lines([measure(servers, n) for n in sizes])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rss-probe", nargs=4, metavar=("PG", "MONGO", "DB", "ROWS"))
    args = parser.parse_args(argv)
    if args.rss_probe:
        pg, mongo, db, rows = args.rss_probe
        _rss_probe(pg, mongo, db, int(rows))
        return
    with bench_servers() as servers:
        for line in run(servers, tuple(args.sizes)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
