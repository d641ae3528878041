"""The fixed cost of one run (SPEC 10): a run of `reconciliation_job` over an empty window
(nothing to judge), broken down into where the time goes; and what the multiprocess
executor adds per step (the coordinating steps run in the run worker, the others in a
process each).

    python -m benchmarks.bench_fixed [--quick]     # about 5 minutes on 2 loaded cores

In process: the definitions load, the instance, each step (from the run's event log), the
resources' set-up (engine, MongoDB client, mapping with schema reflection, run lock) timed
on their own, and Dagster's share (events, orchestration) as the rest. The CLI line is the
wall time of a whole `recon-pipeline run --dry-run --json` process, imports included
(`python -X importtime` says how much of it the imports take)."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks.paths import (
    QUIET_INSTANCE,
    RunEvent,
    console_script,
    events_of,
    run_worker,
    step_seconds,
)
from benchmarks.servers import BenchServers, bench_servers
from benchmarks.verdict import info, verdict

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0


def empty_window() -> tuple[datetime, datetime]:
    """An hour two hours back: settled, and nothing in a fresh database falls in it."""
    end = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=1), end


@dataclass(frozen=True)
class RunTimes:
    """One run's figures, seconds."""

    wall: float
    cpu: float  # this process's CPU time over the run (its share of a loaded machine aside)
    definitions: float
    instance: float
    resource_init: float
    steps: dict[str, float]
    # From a step's launch (its worker starting, or its run-worker engine event) to its
    # STEP_START, by step name, in the order the steps ran
    step_starts: dict[str, float]
    in_run_worker: frozenset[str]  # the steps the run worker ran itself

    @property
    def in_steps(self) -> float:
        return sum(self.steps.values())


def _step_name(key: str) -> str:
    return key.split(".", 1)[-1]


def times_from_events(events: list[RunEvent], wall: float, cpu: float, definitions: float,
                      instance: float) -> RunTimes:
    """Step durations (STEP_START -> STEP_SUCCESS/FAILURE), resource set-up, and the wait
    from a step's launch (multiprocess) to its STEP_START, from the event log. A step the
    run worker runs itself opens with an engine event; a step process, with its worker
    starting."""
    launches: dict[str, float] = {}
    in_run_worker: set[str] = set()
    step_starts: dict[str, float] = {}
    resource_init = 0.0
    init_started: float | None = None
    for kind, key, at in events:
        if kind in ("STEP_WORKER_STARTING", "ENGINE_EVENT") and key and key not in launches:
            launches[key] = at
            if kind == "ENGINE_EVENT":
                in_run_worker.add(_step_name(key))
        elif kind == "STEP_START" and key in launches:
            step_starts[_step_name(key)] = at - launches[key]
        elif kind == "RESOURCE_INIT_STARTED":
            init_started = at
        elif kind == "RESOURCE_INIT_SUCCESS" and init_started is not None:
            resource_init += at - init_started
            init_started = None
    steps = {_step_name(key): seconds for key, seconds in step_seconds(events).items()}
    return RunTimes(wall, cpu, definitions, instance, resource_init, steps, step_starts,
                    frozenset(in_run_worker))


def in_process_run(pg_url: str, mongo_url: str, db_name: str) -> RunTimes:
    """One run as `recon-pipeline run` makes it (an ephemeral instance, in process)."""
    from dagster import DagsterInstance

    import recon_pipeline
    from recon_pipeline.cli.runner import QUIET_LOGGERS, reconciliation_job_def
    from recon_pipeline.defs.partitions import partition_covering
    from recon_pipeline.defs.resources import (
        MappingResource,
        MongoResource,
        PostgresResource,
        reconciliation_resources,
    )

    start, end = empty_window()
    began, cpu = time.perf_counter(), time.process_time()
    job = reconciliation_job_def()
    definitions = time.perf_counter() - began
    resources = reconciliation_resources(
        PostgresResource(database_url=pg_url),
        MongoResource(mongodb_url=mongo_url, database=db_name), MappingResource())
    mark = time.perf_counter()
    with DagsterInstance.ephemeral() as instance:
        made = time.perf_counter() - mark
        result = job.execute_in_process(
            run_config={**recon_pipeline.run_config(window_start=start, window_end=end,
                                                    dry_run=True), **QUIET_LOGGERS},
            instance=instance, resources=resources,
            partition_key=partition_covering(end, datetime.now(UTC)))
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        assert result.success
        events = events_of(instance, result.run_id)
    return times_from_events(events, wall, cpu, definitions, made)


def resource_setup(pg_url: str, mongo_url: str) -> dict[str, float]:
    """What each step's resources cost to set up, timed one by one (seconds)."""
    from recon_pipeline.local.environment import packaged_mapping_path
    from recon_pipeline.stores import run_lock
    from recon_pipeline.stores.mongo import create_client, reachable
    from recon_pipeline.stores.postgres import connect_engine, load_mapping

    figures: dict[str, float] = {}
    began = time.perf_counter()
    engine = connect_engine(pg_url)
    figures["PostgreSQL engine + first connection"] = time.perf_counter() - began
    try:
        began = time.perf_counter()
        load_mapping(packaged_mapping_path(), engine)
        figures["mapping read + schema reflection"] = time.perf_counter() - began
        claimant = run_lock.Claimant.this_process(f"bench-{uuid.uuid4().hex[:8]}")
        began = time.perf_counter()
        run_lock.acquire(engine, claimant, lease_seconds=120, wait_seconds=60,
                         poll_seconds=1, on_wait=lambda holder: None)
        with run_lock.keep_alive(engine, claimant, 120):
            pass
        run_lock.step_done(engine, claimant, 120)
        run_lock.release(engine, claimant.run_id)
        figures["run lock take + heartbeat start/stop + step done + release"] = (
            time.perf_counter() - began)
    finally:
        engine.dispose()
    began = time.perf_counter()
    client = create_client(mongo_url)
    reachable(client["recon"])
    client.close()
    figures["MongoDB client + ping"] = time.perf_counter() - began
    return figures


def import_seconds(stderr: str) -> float:
    """The imports' share of a process, from `python -X importtime` (top-level modules)."""
    total = 0
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| {1,2}(\S+)$", line)
        if found:
            total += int(found.group(1))
    return total / 1e6


def cli_process(pg_url: str, mongo_url: str, db_name: str, *,
                importtime: bool = False) -> tuple[float, float, str]:
    """Wall and CPU time of one `recon-pipeline run --dry-run --json` (the console script)
    over the empty window, and its stderr."""
    start, end = empty_window()
    env = {**os.environ, "DATABASE_URL": pg_url, "MONGODB_URL": mongo_url,
           "MONGODB_DATABASE": db_name}
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []),
               console_script(), "run", "--start", start.isoformat(),
               "--end", end.isoformat(), "--dry-run", "--json"]
    began, before = time.perf_counter(), os.times()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    wall, after = time.perf_counter() - began, os.times()
    if done.returncode != 0:
        raise RuntimeError(f"recon-pipeline run failed: {done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system)
    return wall, cpu, done.stderr


@contextmanager
def dagster_home(servers: BenchServers) -> Iterator[dict[str, str]]:
    """A DAGSTER_HOME with the project's dagster.yaml, its storage a fresh PostgreSQL
    database (as the daemon runs it); the environment variables that select it. The copy
    also sets the step processes' console logger to WARNING (paths.QUIET_INSTANCE): each
    step would otherwise print its STEP_WORKER_STARTED line amid the bench's output."""
    import sqlalchemy as sa

    from recon_pipeline.local import embedded

    name = f"recon_bench_dagster_{uuid.uuid4().hex[:8]}"
    embedded.ensure_database(servers.postgres_admin_url, name)
    url = sa.make_url(servers.postgres_admin_url).set(
        drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="recon-bench-home-") as home:
        config = (REPO / "dagster.yaml").read_text() + yaml.safe_dump(QUIET_INSTANCE)
        (Path(home) / "dagster.yaml").write_text(config)
        try:
            yield {"DAGSTER_HOME": home, "DAGSTER_POSTGRES_URL": url}
        finally:
            import psycopg

            with psycopg.connect(servers.postgres_admin_url.replace("+psycopg", ""),
                                 autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


def multiprocess_run(env: dict[str, str],
                     execution: dict[str, Any] | None) -> tuple[RunTimes, bool | None]:
    """One run as the daemon makes it: `execute_job` of the reconstructable job under the
    multiprocess executor (`execution`: its config, None for the job's default), in a run
    worker process of its own (benchmarks/run_worker.py), on DAGSTER_HOME's instance; with
    whether its forkserver was a fork of the run worker (None: it started none)."""
    from recon_pipeline.defs.partitions import last_complete_hour

    start, end = empty_window()
    spec = {"options": {"window_start": start.isoformat(), "window_end": end.isoformat(),
                        "dry_run": True},
            "tags": {"dagster/partition": last_complete_hour(end)},
            "execution": execution, "instance": "home"}
    figures = run_worker(spec, {**os.environ, **env})
    times = times_from_events(figures["events"], figures["wall"], figures["cpu"], 0.0,
                              figures["instance"])
    return times, figures["forkserver_forked"]


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def describe_in_process(runs: list[RunTimes]) -> list[str]:
    """The first run apart; the run nearest the median of the others broken down."""
    median = statistics.median(run.wall for run in runs[1:])
    typical = min(runs[1:], key=lambda run: abs(run.wall - median))
    steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in typical.steps.items())
    rest = typical.wall - typical.definitions - typical.instance - typical.in_steps
    return [
        info("fixed cost, in process, first run in this process",
             f"{_seconds(runs[0].wall)} wall, {_seconds(runs[0].cpu)} CPU (first-use imports "
             "inside Dagster included)"),
        info("fixed cost, in process, where it goes",
             f"definitions {_seconds(typical.definitions)}, instance "
             f"{_seconds(typical.instance)}, resources set up {_seconds(typical.resource_init)},"
             f" steps {_seconds(typical.in_steps)}, Dagster between steps (events, plan, "
             f"outputs) {_seconds(rest - typical.resource_init)}; of {_seconds(typical.wall)} "
             f"wall, {_seconds(typical.cpu)} CPU in this process"),
        info("fixed cost, in process, steps (s)", steps),
    ]


def describe_multiprocess(label: str, run: RunTimes) -> str:
    """From launch to STEP_START: the steps the run worker runs itself, and the step
    processes. Under the job's default, the first step process waits for the forkserver's
    imports when it is a new interpreter (forked from the run worker, it has them); under
    spawn, for nothing more than the others."""
    own = [s for name, s in run.step_starts.items() if name in run.in_run_worker]
    forked = [s for name, s in run.step_starts.items() if name not in run.in_run_worker]
    where = [f"{len(own)} in the run worker" + (
        f", {statistics.mean(own):.2f} s each from launch to STEP_START" if own else "")]
    if forked:
        first, *later = forked
        where.append(f"{len(forked)} in processes: first {_seconds(first)}" + (
            f", later {statistics.mean(later):.2f} s each" if later else ""))
    return info(f"multiprocess executor, {label}",
                f"wall {_seconds(run.wall)}, {len(run.steps)} steps: {'; '.join(where)}; "
                f"inside the steps {_seconds(run.in_steps)}")


def run(servers: BenchServers, quick: bool = False) -> list[str]:
    lines: list[str] = []
    repeat = 2 if quick else 3
    with servers.fresh_database() as (_engine, url, db_name):
        runs = [in_process_run(url, servers.mongodb_url, db_name) for _ in range(repeat + 1)]
        lines += describe_in_process(runs)
        setup = resource_setup(url, servers.mongodb_url)
        lines.append(info("resource set-up, once per step process", ", ".join(
            f"{name} {seconds:.2f} s" for name, seconds in setup.items())))
        wall, cpu, _ = cli_process(url, servers.mongodb_url, db_name)
        timed_wall, _, stderr = cli_process(url, servers.mongodb_url, db_name, importtime=True)
        lines.append(info("recon-pipeline run --dry-run --json, whole process",
                          f"{_seconds(wall)} wall, {_seconds(cpu)} CPU (under -X importtime "
                          f"{_seconds(timed_wall)}, of which imports "
                          f"{_seconds(import_seconds(stderr))})"))
        with dagster_home(servers) as home:
            env = {"DATABASE_URL": url, "MONGODB_URL": servers.mongodb_url,
                   "MONGODB_DATABASE": db_name, **home}
            default, forked = multiprocess_run(env, None)
            # Dagster's own default, for comparison (minutes on a loaded machine).
            spawn = None if quick else multiprocess_run(
                env, {"start_method": {"spawn": {}}})[0]
        lines.append(describe_multiprocess(
            "job default (forkserver, " + ("forked from the run worker)" if forked else
                                           "a new interpreter)"), default))
        if spawn is not None:
            lines.append(describe_multiprocess("start_method spawn (Dagster's default)", spawn))
            lines.append(info("multiprocess executor, job default vs spawn",
                              f"{spawn.wall / default.wall:.2f}x faster"))
        lines.append(verdict("fixed cost of one run, in process",
                             statistics.median(r.wall for r in runs[1:]), TARGET_SECONDS,
                             at_most=True, unit=" s"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, no multiprocess run under spawn")
    args = parser.parse_args(argv)
    with bench_servers() as servers:
        for line in run(servers, quick=args.quick):
            print(line, flush=True)


if __name__ == "__main__":
    main()
