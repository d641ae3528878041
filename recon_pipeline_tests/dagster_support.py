"""Shared by the Dagster-surface tests: resources pointing at the test servers, seeded
drift with the exact figures a run must report, and a PostgreSQL-backed Dagster home."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from dagster import DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.defs.resources import (
    MappingResource,
    MongoResource,
    PostgresResource,
    reconciliation_resources,
)
from recon_pipeline.engine.report import RunReport
from recon_pipeline.local.demo_data import SeedSummary, seed_demo
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports
from recon_pipeline_tests.conftest import mongo_url_of

REPO = Path(__file__).resolve().parents[1]
# Seeded data is dated an hour or two back, so the run's real clock sees it all settled,
# and the live idempotency keys (valid a day past the seed's `now`) stay live.
SEED_NOW = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
WINDOW_START, WINDOW_END = SEED_NOW - timedelta(hours=48), SEED_NOW


def test_resources(pg_url: str, mongo_db: Database[Any],
                   mapping_path: Path | None = None,
                   mongodb_url: str | None = None) -> dict[str, Any]:
    return reconciliation_resources(
        postgres=PostgresResource(database_url=pg_url),
        mongo=MongoResource(mongodb_url=mongodb_url or mongo_url_of(mongo_db),
                            database=mongo_db.name),
        mapping=MappingResource(path=str(mapping_path) if mapping_path else None))


test_resources.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


@dataclass(frozen=True)
class Seeded:
    summary: SeedSummary
    counts: dict[str, int]


def seed(engine: sa.Engine, mongo: Database[Any], config: ReconConfig, *, clients: int = 40,
         seed_value: int = 3) -> Seeded:
    summary = seed_demo(engine, mongo, config, clients=clients, drift_rate=0.2,
                        seed=seed_value, now=SEED_NOW)
    return Seeded(summary, expected_counts(summary))


def expected_counts(summary: SeedSummary) -> dict[str, int]:
    """Every figure of the report row for a run over the whole seeded window: all drift
    found, missing and mismatched repaired, orphans only reported; the 3 failed outbox
    messages delivered, the 3 malformed ones dead; the 4 expired keys deleted."""
    drift = summary.drift.values()
    missing = sum(len(d.missing) for d in drift)
    mismatched = sum(len(d.mismatched) for d in drift)
    orphans = sum(len(d.orphans) for d in drift)
    return {
        "records_checked": sum(d.rows for d in drift),
        "mismatches_found": missing + mismatched + orphans,
        "missing_in_mongo": missing, "field_mismatches": mismatched,
        "orphans_in_mongo": orphans, "repaired": missing + mismatched,
        "repair_failed": 0, "repair_skipped": 0,
        "outbox_attempted": 6, "outbox_sent": 3, "outbox_failed": 0, "outbox_dead": 3,
        "outbox_stale": 0, "idempotency_keys_deleted": 4, "outbox_messages_deleted": 0,
    }


def write_dagster_home(home: Path, dagster_postgres_url: str) -> dict[str, str]:
    """A DAGSTER_HOME holding the project's dagster.yaml; the env that makes it load
    (the same set-up as `make dev` and `make demo`)."""
    from recon_pipeline.local.dev import dagster_home_environment

    return dagster_home_environment(home, dagster_postgres_url, REPO)


def set_step_environment(monkeypatch: Any, pg_url: str, mongo_db: Database[Any],
                         home: Path, dagster_postgres_url: str,
                         mapping: Path | None = None) -> None:
    """What the job's step processes inherit when a test runs it out of process: the
    servers, the mapping, and a PostgreSQL-backed DAGSTER_HOME (as the daemon has)."""
    values = {"DATABASE_URL": pg_url, "MONGODB_URL": mongo_url_of(mongo_db),
              "MONGODB_DATABASE": mongo_db.name,
              **write_dagster_home(home, dagster_postgres_url)}
    if mapping is not None:
        values["RECON_CONFIG"] = str(mapping)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "RECON_"))}
    env.update(extra)
    return env



def run_job(pg_url: str, mongo_db: Database[Any], *, mongodb_url: str | None = None,
            mapping_path: Path | None = None, tags: dict[str, str] | None = None,
            instance: DagsterInstance | None = None, **options: Any) -> ExecuteInProcessResult:
    """One whole in-process run of `reconciliation_job` against the test servers, over
    the seeded window unless options say otherwise; never raises on a failed step. Pass
    `instance` to read the run's log afterwards."""
    from recon_pipeline.cli.runner import QUIET_LOGGERS
    from recon_pipeline.definitions import defs
    from recon_pipeline.defs.partitions import last_complete_hour

    options.setdefault("window_start", WINDOW_START)
    options.setdefault("window_end", WINDOW_END)
    job = defs.resolve_job_def("reconciliation_job")
    with ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(DagsterInstance.ephemeral())
        return job.execute_in_process(
            run_config={**recon_pipeline.run_config(**options), **QUIET_LOGGERS},
            instance=instance, partition_key=last_complete_hour(SEED_NOW),
            resources=test_resources(pg_url, mongo_db, mapping_path, mongodb_url),
            raise_on_error=False, tags=tags)


def report_of(engine: sa.Engine, result: ExecuteInProcessResult) -> RunReport:
    """The report row the run wrote (its materialization names it)."""
    [event] = result.get_asset_materialization_events()
    report_id = event.materialization.metadata["report_id"].value
    return RunReport.from_row(reports.read_report(engine, int(report_id)))  # type: ignore[arg-type]


def step_errors(result: ExecuteInProcessResult) -> list[str]:
    """The error messages of a run's failed steps, each with the errors that caused it
    (Dagster wraps the op's own error)."""
    messages = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        chain = []
        while error is not None:
            chain.append(str(error.message).strip())
            error = error.cause
        if chain:
            messages.append(" <- ".join(chain))
    return messages


def start_cli_run(pg_url: str, mongodb_url: str, database: str) -> subprocess.Popen[bytes]:
    """`recon-pipeline run` over the seeded window, as an operator or cron starts it."""
    env = child_env(DATABASE_URL=pg_url, MONGODB_URL=mongodb_url, MONGODB_DATABASE=database)
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "recon-pipeline"), "run", "--start",
         WINDOW_START.isoformat(), "--end", WINDOW_END.isoformat(), "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def mapping_with(tmp_path: Path, replacements: dict[str, str] | None = None,
                 **settings: Any) -> Path:
    """The packaged mapping with some lines replaced (old text -> new text) and some
    `settings:` set (by name), written into `tmp_path`."""
    from recon_pipeline.local.environment import packaged_mapping_path

    text = packaged_mapping_path().read_text()
    for old, new in (replacements or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    if settings:
        raw = yaml.safe_load(text)
        raw["settings"] = {**(raw.get("settings") or {}), **settings}
        text = yaml.safe_dump(raw, sort_keys=False)
    path = tmp_path / "recon.yaml"
    path.write_text(text)
    return path


# A run worker as the daemon starts one: a process of its own that loads the code location
# and makes one run of the job under its default (multiprocess) executor. It prints the
# run id and outcome, then the steps it ran itself, then a line on stderr.
RUN_WORKER = textwrap.dedent("""
    import os, sys
    from dagster import DagsterEventType, DagsterInstance, execute_job, reconstructable
    import recon_pipeline
    from recon_pipeline.cli.runner import reconciliation_job_def
    partition, start, end = sys.argv[1:]
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(reconciliation_job_def), instance=instance,
            tags={"dagster/partition": partition},
            run_config=recon_pipeline.run_config(window_start=start, window_end=end))
        starts = [r.dagster_event for r in instance.all_logs(
            result.run_id, of_type=DagsterEventType.STEP_START)]
        engine = [r.user_message for r in instance.all_logs(
            result.run_id, of_type=DagsterEventType.ENGINE_EVENT)]
    print("forkserver:", *(m for m in engine if m.startswith("Forkserver")), flush=True)
    print(result.run_id, "success" if result.success else "failure", flush=True)
    here = sorted(e.step_key.rsplit(".", 1)[-1] for e in starts if e.pid == os.getpid())
    print("run worker:", " ".join(here), flush=True)
    print("stderr is the run worker's", file=sys.stderr, flush=True)
""")


def start_run_worker(pg_url: str, mongo_db: Database[Any], dagster_postgres_url: str,
                     home: Path) -> subprocess.Popen[str]:
    """RUN_WORKER over the seeded window, on a PostgreSQL-backed DAGSTER_HOME at `home`."""
    from recon_pipeline.defs.partitions import last_complete_hour

    env = child_env(DATABASE_URL=pg_url, MONGODB_URL=mongo_url_of(mongo_db),
                    MONGODB_DATABASE=mongo_db.name,
                    **write_dagster_home(home, dagster_postgres_url))
    return subprocess.Popen(
        [sys.executable, "-c", RUN_WORKER, last_complete_hour(SEED_NOW),
         WINDOW_START.isoformat(), WINDOW_END.isoformat()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
