"""The paths users run `reconciliation_job` on, timed as a benchmark measures them (SPEC 10):

- `run_cli`: `recon-pipeline run ...` as a subprocess (the venv's console script), its
  environment pointing at the bench servers: wall time of the whole command, its own peak
  RSS, the report it printed with `--json`;
- `run_multiprocess`: `execute_job` under the multiprocess executor (a step per process),
  on a persistent temporary instance, resources from the environment like the daemon's;
- `run_in_process`: `execute_in_process` in this process (what `recon-pipeline run` does
  inside its own process), for figures that are information only.

The job paths also return each step's duration read from the run's event log
(`step_seconds`), so one phase of a run (the outbox step, a diff chunk) can be timed on
the path itself. Default settings: the packaged mapping as it ships.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recon_pipeline.stores import reports
from recon_pipeline.stores.postgres import create_engine


@dataclass(frozen=True, slots=True)
class Timed:
    """How many rows (documents, messages) a timed piece of work handled, and in how long."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("inf")


@dataclass(frozen=True, slots=True)
class RunTarget:
    """The servers and MongoDB database a run points at."""

    postgres_url: str
    mongodb_url: str
    mongodb_database: str

    def environment(self) -> dict[str, str]:
        """SPEC 3's variables (recon_pipeline/local/environment.py) for these servers."""
        return {"DATABASE_URL": self.postgres_url, "MONGODB_URL": self.mongodb_url,
                "MONGODB_DATABASE": self.mongodb_database}


@dataclass(frozen=True, slots=True)
class CliRun:
    seconds: float  # wall time of the whole command, start-up included
    peak_rss_mb: float  # the command's own peak (see benchmarks/peak_rss.py)
    report: dict[str, Any]  # what `--json` printed

    @property
    def records_checked(self) -> int:
        return int(self.report["records_checked"])


@dataclass(frozen=True, slots=True)
class JobRun:
    seconds: float  # wall time of the whole run
    report: dict[str, Any]  # the report row the run wrote
    steps: dict[str, float]  # step key -> seconds from STEP_START to its end

    @property
    def records_checked(self) -> int:
        return int(self.report["records_checked"])

    def by_op(self) -> dict[str, float]:
        """Seconds per op, in the order the steps ran: `reconciliation_report.diff_chunk_op[x]`
        counts for `diff_chunk_op`, its fanned-out steps summed."""
        ops: dict[str, float] = {}
        for key, seconds in self.steps.items():
            name = key.rsplit(".", 1)[-1].split("[", 1)[0]
            ops[name] = ops.get(name, 0.0) + seconds
        return ops

    def step(self, name: str) -> float:
        """Seconds of op `name`'s steps (summed when fanned out)."""
        ops = self.by_op()
        if name not in ops:
            raise KeyError(f"no step of op {name!r} in {sorted(self.steps)}")
        return ops[name]


# The step processes' own console logger (STEP_WORKER_STARTED lines) follows the instance's
# python_log_level, not the run config's loggers.
QUIET_INSTANCE = {"python_logs": {"python_log_level": "WARNING"}}


def console_script(name: str = "recon-pipeline") -> str:
    """The venv's console script beside the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: run `make install` first")
    return str(path)


def child_environment(target: RunTarget) -> dict[str, str]:
    """This process's environment with the target's URLs; no DAGSTER_HOME and no RECON_*
    variable, so the run uses the defaults a user gets (ephemeral instance, packaged
    mapping)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "RECON_"))}
    return {**env, **target.environment()}


def run_cli(target: RunTarget, args: Sequence[str]) -> CliRun:
    """`recon-pipeline run ARGS --json`, timed, peak RSS of its own process."""
    with tempfile.TemporaryDirectory(prefix="recon-bench-cli-") as tmp:
        out = Path(tmp) / "measured.json"
        command = [sys.executable, "-m", "benchmarks.peak_rss", str(out), "--",
                   console_script(), "run", *args, "--json"]
        done = subprocess.run(command, env=child_environment(target), capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent.parent)
        if done.returncode not in (0, 1):  # 1: the report says needs_attention
            raise RuntimeError(f"`recon-pipeline run {' '.join(args)}` exited "
                               f"{done.returncode}: {done.stderr.strip()[-2000:]}")
        measured = json.loads(out.read_text())
    return CliRun(measured["seconds"], measured["peak_rss_mb"], json.loads(done.stdout))


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block (step processes inherit them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _partition_key(options: Mapping[str, Any]) -> str:
    from recon_pipeline.defs.partitions import partition_covering

    now = datetime.now(UTC)
    end = options.get("window_end")
    return partition_covering(end if isinstance(end, datetime) else now, now)


def _report_of(target: RunTarget, events: Sequence[Any]) -> dict[str, Any]:
    report_id = None
    for event in events:
        if event.is_step_materialization:
            metadata = event.step_materialization_data.materialization.metadata
            report_id = int(metadata["report_id"].value)
    if report_id is None:
        raise RuntimeError("the run materialized no report")
    engine = create_engine(target.postgres_url)
    try:
        return reports.read_report(engine, report_id)
    finally:
        engine.dispose()


def step_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Each step's duration from the run's event log: STEP_START to STEP_SUCCESS (or
    STEP_FAILURE), by step key."""
    from dagster import DagsterEventType

    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for record in instance.all_logs(run_id, of_type={
            DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS,
            DagsterEventType.STEP_FAILURE}):
        event = record.dagster_event
        if event.event_type is DagsterEventType.STEP_START:
            started[event.step_key] = record.timestamp
        elif event.step_key in started:
            seconds[event.step_key] = record.timestamp - started[event.step_key]
    return seconds


def run_multiprocess(target: RunTarget, **options: Any) -> JobRun:
    """`reconciliation_job` under the multiprocess executor (its default config), as the
    daemon runs it: `recon_pipeline.run_config(**options)`, resources from the
    environment, a persistent temporary instance."""
    from dagster import DagsterInstance, execute_job, reconstructable

    import recon_pipeline
    from recon_pipeline.cli.runner import QUIET_LOGGERS, reconciliation_job_def

    with tempfile.TemporaryDirectory(prefix="recon-bench-dagster-") as home, \
            environment(child_environment(target)), \
            DagsterInstance.local_temp(tempdir=home, overrides=QUIET_INSTANCE) as instance:
        started = time.perf_counter()
        # Not `with execute_job(...)`: entering the result sets up the job's resources in
        # this process to load outputs, and with them the run lock, held after the run.
        result = execute_job(reconstructable(reconciliation_job_def), instance=instance,
                             tags={"dagster/partition": _partition_key(options)},
                             run_config={**recon_pipeline.run_config(**options),
                                         **QUIET_LOGGERS})
        seconds = time.perf_counter() - started
        if not result.success:
            raise RuntimeError(f"multiprocess run {result.run_id} failed")
        steps = step_seconds(instance, result.run_id)
        events = result.all_events
    return JobRun(seconds, _report_of(target, events), steps)


def run_in_process(target: RunTarget, **options: Any) -> JobRun:
    """One in-process run of `reconciliation_job` with the packaged mapping (default
    settings), resources built like the CLI's, an ephemeral instance."""
    from dagster import DagsterInstance

    import recon_pipeline
    from recon_pipeline.cli.runner import QUIET_LOGGERS, reconciliation_job_def
    from recon_pipeline.defs.resources import (
        MappingResource,
        MongoResource,
        PostgresResource,
        reconciliation_resources,
    )

    resources = reconciliation_resources(
        PostgresResource(database_url=target.postgres_url),
        MongoResource(mongodb_url=target.mongodb_url, database=target.mongodb_database),
        MappingResource())
    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = reconciliation_job_def().execute_in_process(
            run_config={**recon_pipeline.run_config(**options), **QUIET_LOGGERS},
            instance=instance, resources=resources, partition_key=_partition_key(options))
        seconds = time.perf_counter() - started
        if not result.success:
            raise RuntimeError(f"in-process run {result.run_id} failed")
        steps = step_seconds(instance, result.run_id)
    return JobRun(seconds, _report_of(target, result.all_events), steps)
