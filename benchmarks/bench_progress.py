"""What watching a run costs: a 200k-row full scan of `incoming_emails` diffed by the
engine with no progress callback and with one (the op's default interval, and a line on
every batch as the worst case), alternated in one process on the same data; then one
`recon-pipeline run --full-scan --dry-run` whose stderr shows the progress lines."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.seed import ENTITY, mapping, seed_emails
from benchmarks.servers import bench_servers
from recon_pipeline.engine.extract import diff_chunk, plan_chunks
from recon_pipeline.engine.progress import PROGRESS_INTERVAL, ChunkProgress, ProgressMeter
from recon_pipeline.engine.run_steps import RunScope, begin_run
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.stores.mongo import create_client

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def window() -> RunWindow:
    return RunWindow(NOW - timedelta(days=400), NOW, full_scan=True)


VARIANTS: dict[str, float | None] = {"off": None, "on (10 s)": PROGRESS_INTERVAL,
                                     "on (every batch)": 0.0}


def engine_times(engine: Any, db: Any, config: Any, repeats: int
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    report_id = begin_run(engine, RunScope("bench-progress", window()), NOW)
    [chunk] = plan_chunks(engine, config, window(), [ENTITY])
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    # This process's CPU (every thread): the work progress adds, without the servers'
    # time, which moves the wall time by more than progress could.
    cpu_times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    lines: list[ChunkProgress] = []
    for _ in range(repeats):
        for name, interval in VARIANTS.items():
            started, cpu = time.perf_counter(), time.process_time()
            if interval is None:
                diff_chunk(engine, db, config, report_id, window(), chunk, NOW)
            else:
                diff_chunk(engine, db, config, report_id, window(), chunk, NOW,
                           progress=lines.append, progress_interval=interval)
            times[name].append(time.perf_counter() - started)
            cpu_times[name].append(time.process_time() - cpu)
    return times, cpu_times


def read_cost(calls: int = 200_000) -> float:
    """Seconds one `ProgressMeter.read` costs (a clock read, no line due): what the engine
    pays per batch of rows read."""
    meter = ProgressMeter("x_0", None, lambda _: None)
    started = time.perf_counter()
    for _ in range(calls):
        meter.read(5000, 0)
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with bench_servers() as servers, servers.fresh_database() as (engine, url, name):
        client = create_client(servers.mongodb_url)
        seed_emails(engine, client[name], 1, args.rows)
        config = mapping(engine)
        times, cpu_times = engine_times(engine, client[name], config, args.repeats)
        base = statistics.median(times["off"])
        batches = -(-args.rows // 5000)
        per_read = read_cost()
        print(f"ProgressMeter.read: {per_read * 1e6:.2f} us per batch; {batches} batches "
              f"= {batches * per_read * 1e3:.3f} ms of a {base:.1f}s scan "
              f"({batches * per_read / base * 100:.4f}%)", flush=True)
        base_cpu = statistics.median(cpu_times["off"])
        for variant, seconds in times.items():
            cost = (statistics.median(seconds) / base - 1) * 100
            cpu = cpu_times[variant]
            cpu_cost = (statistics.median(cpu) / base_cpu - 1) * 100
            print(f"engine {variant:<17} median {statistics.median(seconds):.2f}s "
                  f"(runs {', '.join(f'{s:.2f}' for s in seconds)})  cost {cost:+.1f}%; "
                  f"CPU of this process median {statistics.median(cpu):.2f}s "
                  f"(runs {', '.join(f'{s:.2f}' for s in cpu)})  cost {cpu_cost:+.1f}%",
                  flush=True)
        env = {**os.environ, "DATABASE_URL": url, "MONGODB_URL": servers.mongodb_url,
               "MONGODB_DATABASE": name}
        env.pop("DAGSTER_HOME", None)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "recon_pipeline.cli.main", "run", "--full-scan",
             "--dry-run", "--entity", ENTITY],
            env=env, capture_output=True, text=True, check=False)
        print(f"cli run {time.perf_counter() - started:.1f}s exit {done.returncode}")
        print(done.stderr.strip())
        print(done.stdout.strip())


if __name__ == "__main__":
    main()
