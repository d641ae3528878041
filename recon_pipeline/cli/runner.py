"""One run of `reconciliation_job` outside the daemon (the CLI, `demo`, benchmarks):
in process, recorded in the instance when `DAGSTER_HOME` is set, explicit resources from
the resolved environment. The run lock in PostgreSQL (RunLock) keeps it from overlapping
any other run, however that one was launched."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dagster import (
    DagsterInstance,
    EnvVar,
    InitLoggerContext,
    JobDefinition,
    LoggerDefinition,
    logger,
)

from recon_pipeline.defs.config import ReconciliationConfig, build_run_config
from recon_pipeline.defs.ops import PROGRESS_INTERVAL_TAG
from recon_pipeline.defs.resources import (
    MappingResource,
    MongoResource,
    PostgresResource,
    reconciliation_resources,
)
from recon_pipeline.engine.progress import PROGRESS_EXTRA, ChunkProgress
from recon_pipeline.local.environment import Environment
from recon_pipeline.model.masking import mask_text

QUIET_CONSOLE = {"console": {"config": {"log_level": "WARNING"}}}
QUIET_LOGGERS = {"loggers": QUIET_CONSOLE}
PROGRESS_LOGGER = "recon_progress"


def reconciliation_job_def() -> JobDefinition:
    """Module-level, so `reconstructable(reconciliation_job_def)` can rebuild it in step
    processes (resources from the environment those processes inherit)."""
    from recon_pipeline.definitions import defs

    return defs.resolve_job_def("reconciliation_job")


def _url_variable(env: Environment, name: str) -> EnvVar | None:
    """The URL as `EnvVar(name)`: Dagster stores the variable's name in the run's job
    snapshot, never its value (a password). None when the embedded default serves: the
    resource resolves it itself, and no URL is involved."""
    return EnvVar(name) if name in env.url_variables else None


def resources_for(env: Environment) -> dict[str, Any]:
    return reconciliation_resources(
        postgres=PostgresResource(database_url=_url_variable(env, "DATABASE_URL")),
        mongo=MongoResource(mongodb_url=_url_variable(env, "MONGODB_URL"),
                            database=env.mongodb_database),
        mapping=MappingResource(path=str(env.config_path)))


@contextmanager
def dagster_instance() -> Iterator[DagsterInstance]:
    """The instance of `DAGSTER_HOME` when set (the run shows in the UI), else ephemeral."""
    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            yield instance
    else:
        with DagsterInstance.ephemeral() as instance:
            yield instance


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    success: bool
    report_id: int | None
    errors: tuple[str, ...]


class _ProgressHandler(logging.Handler):
    """Hands the `ChunkProgress` a run log record carries (diff_chunk_op) to a callback."""

    def __init__(self, on_progress: Callable[[ChunkProgress], None]) -> None:
        super().__init__(logging.INFO)
        self.on_progress = on_progress

    def emit(self, record: logging.LogRecord) -> None:
        values = getattr(record, PROGRESS_EXTRA, None)
        if isinstance(values, dict):
            self.on_progress(ChunkProgress.from_dict(values))


def progress_logger(on_progress: Callable[[ChunkProgress], None]) -> LoggerDefinition:
    """A run logger that receives the run's log records in this process (in-process runs
    only) and passes their progress on."""

    @logger(None, description="chunk progress to the CLI")
    def recon_progress(_context: InitLoggerContext) -> logging.Logger:
        python_logger = logging.Logger(PROGRESS_LOGGER, logging.INFO)
        python_logger.addHandler(_ProgressHandler(on_progress))
        return python_logger

    return recon_progress


def execute_reconciliation(env: Environment, options: ReconciliationConfig, partition_key: str, *,
                           quiet: bool = True,
                           on_progress: Callable[[ChunkProgress], None] | None = None,
                           progress_interval: float | None = None) -> RunOutcome:
    """`on_progress` receives each chunk's progress, at most every `progress_interval`
    seconds (default: the op's)."""
    job = reconciliation_job_def()
    loggers: dict[str, Any] = dict(QUIET_CONSOLE) if quiet else {"console": {}}
    if on_progress is not None:
        job = job.with_logger_defs({**job.loggers, PROGRESS_LOGGER: progress_logger(on_progress)})
        loggers[PROGRESS_LOGGER] = {}
    tags = ({} if progress_interval is None
            else {PROGRESS_INTERVAL_TAG: str(progress_interval)})
    run_config = {**build_run_config(options), "loggers": loggers}
    with dagster_instance() as instance:
        result = job.execute_in_process(
            run_config=run_config, instance=instance, partition_key=partition_key,
            resources=resources_for(env), raise_on_error=False, tags=tags)
    report_id = None
    for event in result.get_asset_materialization_events():
        report_id = int(event.materialization.metadata["report_id"].value)  # type: ignore[arg-type]
    errors = tuple(mask_text(str(error.message).strip(), env.secrets)
                   for event in result.all_events
                   for error in [getattr(event.event_specific_data, "error", None)]
                   if error is not None)
    return RunOutcome(result.run_id, result.success, report_id, errors)
