"""Orchestration: the wall time of one in-process run of `reconciliation_job` on seeded
demo data with drift (default settings), the path every user run takes.

    python -m benchmarks.bench_orchestration [--clients N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from benchmarks.servers import bench_servers, run_job
from recon_pipeline.local.demo_data import seed_demo
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import load_mapping


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    now = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    start, end = now - timedelta(hours=48), now
    with bench_servers() as servers, servers.fresh_database() as (engine, url, db_name):
        client = create_client(servers.mongodb_url)
        mongo = client[db_name]
        config = load_mapping(packaged_mapping_path(), engine)
        times, checked = [], 0
        for _ in range(args.repeat):
            seed_demo(engine, mongo, config, clients=args.clients, drift_rate=0.05, now=now)
            started = time.perf_counter()
            report = run_job(url, servers.mongodb_url, db_name, window_start=start,
                             window_end=end)
            times.append(time.perf_counter() - started)
            checked = report["records_checked"]
        client.close()
    median = statistics.median(times)
    print(f"reconciliation_job in process ({args.clients} clients, {checked} records, "
          f"default settings): {median:.2f} s per run, {checked / median:.0f} records/s",
          flush=True)


if __name__ == "__main__":
    main()
