"""The paths users run `reconciliation_job` on, timed as a benchmark measures them (SPEC 10):

- `run_cli`: `recon-pipeline run ...` as a subprocess (the venv's console script), its
  environment pointing at the bench servers: wall time of the whole command, its own peak
  RSS, the report it printed with `--json`;
- `run_multiprocess`: `execute_job` under the multiprocess executor in a run worker
  process of its own (benchmarks/run_worker.py), on a temporary instance, resources from
  the environment like the daemon's;
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
from collections.abc import Iterable, Mapping, Sequence
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
    # Multiprocess: whether the run's forkserver was a fork of the run worker.
    forkserver_forked: bool | None = None

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


def _partition_key(options: Mapping[str, Any]) -> str:
    from recon_pipeline.defs.partitions import partition_covering

    now = datetime.now(UTC)
    end = options.get("window_end")
    return partition_covering(end if isinstance(end, datetime) else now, now)


def report_id_of(events: Iterable[Any]) -> int | None:
    """The report id the run's materialization (a DagsterEvent among `events`) names."""
    report_id = None
    for event in events:
        if event.is_step_materialization:
            metadata = event.step_materialization_data.materialization.metadata
            report_id = int(metadata["report_id"].value)
    return report_id


def _report_of(target: RunTarget, events: Sequence[Any]) -> dict[str, Any]:
    return _report(target, report_id_of(events))


def _report(target: RunTarget, report_id: int | None) -> dict[str, Any]:
    if report_id is None:
        raise RuntimeError("the run materialized no report")
    engine = create_engine(target.postgres_url)
    try:
        return reports.read_report(engine, report_id)
    finally:
        engine.dispose()


# One event of a run's log: (event type, step key, timestamp).
RunEvent = tuple[str, str | None, float]


def step_seconds(events: Sequence[RunEvent]) -> dict[str, float]:
    """Each step's duration from the run's event log: STEP_START to STEP_SUCCESS (or
    STEP_FAILURE), by step key."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for kind, key, at in events:
        if key is None:
            continue
        if kind == "STEP_START":
            started[key] = at
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and key in started:
            seconds[key] = at - started[key]
    return seconds


def run_events(records: Iterable[Any]) -> list[RunEvent]:
    """Event log records as RunEvents (records without a Dagster event left out)."""
    return [(record.dagster_event.event_type_value, record.step_key, record.timestamp)
            for record in records if record.dagster_event is not None]


def events_of(instance: Any, run_id: str) -> list[RunEvent]:
    return run_events(instance.all_logs(run_id))


def run_worker(spec: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """One multiprocess run in a run worker of its own (benchmarks/run_worker.py), its
    figures (an error naming what failed if the run did not succeed); `env` is the
    process's environment."""
    from benchmarks.run_worker import RESULT_MARK

    done = subprocess.run([sys.executable, "-m", "benchmarks.run_worker", json.dumps(spec)],
                          env=dict(env), capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"run worker exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK):])
    if not figures["success"]:
        raise RuntimeError(f"run {figures['run_id']} failed: {done.stderr.strip()[-3000:]}")
    figures["events"] = [tuple(event) for event in figures["events"]]
    return figures


def run_multiprocess(target: RunTarget, **options: Any) -> JobRun:
    """`reconciliation_job` under the multiprocess executor (its default config), as the
    daemon runs it: a run worker process of its own (benchmarks/run_worker.py),
    `recon_pipeline.run_config(**options)`, resources from the environment, a temporary
    instance. Timed from `execute_job` in that process."""
    spec = {"options": {k: v.isoformat() if isinstance(v, datetime) else v
                        for k, v in options.items()},
            "tags": {"dagster/partition": _partition_key(options)},
            "execution": None, "instance": "temp"}
    figures = run_worker(spec, child_environment(target))
    return JobRun(figures["wall"], _report(target, figures["report_id"]),
                  step_seconds(figures["events"]), figures["forkserver_forked"])


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
        steps = step_seconds(events_of(instance, result.run_id))
    return JobRun(seconds, _report_of(target, result.all_events), steps)
