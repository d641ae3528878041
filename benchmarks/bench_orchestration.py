"""Orchestration overhead: one in-process run of `reconciliation_job` (one chunk per
entity) against calling the engine's `run_reconciliation` directly on the same data.

    python -m benchmarks.bench_orchestration [--clients N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.servers import bench_servers
from recon_pipeline.demo import seed_demo
from recon_pipeline.engine.mapping import load_mapping
from recon_pipeline.engine.reconcile import RunRequest, run_reconciliation
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.environment import packaged_mapping_path
from recon_pipeline.saga import clean_up, retry_outbox
from recon_pipeline.stores.mongo import create_client


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from dagster import DagsterInstance

    import recon_pipeline
    from recon_pipeline.partitions import last_complete_hour
    from recon_pipeline.resources import (
        MappingResource,
        MongoResource,
        PostgresResource,
        reconciliation_resources,
    )
    from recon_pipeline.runner import QUIET_LOGGERS, reconciliation_job_def

    now = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    start, end = now - timedelta(hours=48), now
    with bench_servers() as servers, servers.fresh_database() as (engine, url, db_name):
        client = create_client(servers.mongodb_url)
        mongo = client[db_name]
        config = load_mapping(packaged_mapping_path(), engine)
        job = reconciliation_job_def()
        resources = reconciliation_resources(
            PostgresResource(database_url=url),
            MongoResource(mongodb_url=servers.mongodb_url, database=db_name), MappingResource())
        run_config = {**recon_pipeline.run_config(window_start=start, window_end=end),
                      **QUIET_LOGGERS}

        def seeded() -> None:
            seed_demo(engine, mongo, config, clients=args.clients, drift_rate=0.05, now=now)

        def direct() -> None:
            run_reconciliation(
                engine, servers.mongodb_url, db_name, config,
                RunRequest(run_id="bench", window=RunWindow(start, end)),
                outbox=lambda db: retry_outbox(engine, db, config),
                cleanup=lambda: clean_up(engine, config, datetime.now(UTC)))

        def orchestrated() -> None:
            with DagsterInstance.ephemeral() as instance:
                result = job.execute_in_process(
                    run_config=run_config, instance=instance, resources=resources,
                    partition_key=last_complete_hour(now))
            assert result.success

        direct_times, dagster_times = [], []
        for _ in range(args.repeat):
            seeded()
            direct_times.append(timed(direct))
            seeded()
            dagster_times.append(timed(orchestrated))
        client.close()
    d, o = statistics.median(direct_times), statistics.median(dagster_times)
    print(f"orchestration overhead ({args.clients} clients, one chunk per entity, in process):"
          f" engine {d:.2f} s, reconciliation_job {o:.2f} s, ratio {o / d:.2f}x, "
          f"+{o - d:.2f} s per run", flush=True)


if __name__ == "__main__":
    main()
