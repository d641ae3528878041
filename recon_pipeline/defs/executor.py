"""The executor of `reconciliation_job` when it runs out of process (the daemon, `dagster
dev`, `execute_job`): Dagster's default `multi_or_in_process_executor`, same config, whose
multiprocess mode starts each step from a forkserver unless the run config names a
`start_method`.

Dagster's own default, `spawn`, starts a fresh interpreter for every step, which imports
dagster and this code location again: seconds per step, and a run is a chain of seven
steps or more. A forkserver imports them once per run (`PRELOAD_MODULES`), and each step is a fork
of it. `execute_in_process` (the CLI, the tests) never gets here.

The forkserver is started for each run and stopped when the run ends: a step forked from
it sees the environment (`DATABASE_URL`, ...) of the moment the forkserver started, so a
process that makes several runs (a test session, a notebook) must not hand a later run a
forkserver started for an earlier one. Dagster's run workers make one run per process;
two multiprocess runs at once in one process (threads) would stop each other's."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from dagster import (
    Executor,
    ExecutorDefinition,
    InitExecutorContext,
    multi_or_in_process_executor,
)

if TYPE_CHECKING:
    from dagster import DagsterEvent
    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan
    from dagster._core.execution.retries import RetryMode
    from dagster._core.execution.step_dependency_config import StepDependencyConfig

# What a step process would otherwise import for itself, found by listing the modules a
# step adds to the preloaded ones: the code location (dagster, SQLAlchemy, pymongo and the
# engine come with it) and the module `reconstructable(reconciliation_job_def)` points at;
# the source's driver (SQLAlchemy imports it on first connect); the instance's PostgreSQL
# storage; and what Dagster loads lazily in a step (instance, IO manager paths, compute
# logs, secrets). The forkserver skips a name that does not import (a later Dagster moving
# a private module costs its import, never a step).
PRELOAD_MODULES = (
    "recon_pipeline.definitions",
    "recon_pipeline.cli.runner",
    "recon_pipeline.local.embedded",
    "psycopg",
    "dagster_postgres",
    "psycopg2.extras",
    "upath",
    "fsspec",
    "psutil",
    "dotenv",
    "watchdog.observers.polling",
    "multiprocessing.queues",
    "multiprocessing.synchronize",
    "dagster._core.instance.factory",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.secrets.env_file",
    "dagster._core.system_config.composite_descent",
    "dagster._core.utility_ops",
    "dagster._core.workspace.autodiscovery",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._utils.test.definitions",
)
FORKSERVER = {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}


def with_forkserver_default(config: Mapping[str, Any]) -> dict[str, Any]:
    """The executor config, with the multiprocess mode's start method defaulting to the
    preloaded forkserver; an explicit `start_method` (spawn, say) is kept."""
    multiprocess = config.get("multiprocess")
    if multiprocess is None or multiprocess.get("start_method"):
        return dict(config)
    return {"multiprocess": {**multiprocess, "start_method": FORKSERVER}}


def stop_forkserver() -> None:
    """Stop this process's forkserver, if one runs: the next run starts its own.

    SIGTERM first: left to exit by itself, the forkserver tears down an interpreter that
    has imported Dagster and the code location (0.5 s at the end of every run, measured),
    and it holds nothing to flush: its steps have ended and report through their own
    processes."""
    server: Any = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    pid = server._forkserver_pid
    if pid is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    # A private method (CPython's own tests stop the server with it), on every 3.11; it
    # reaps the process.
    server._stop()


class ForkserverPerRun(Executor):
    """Dagster's multiprocess executor, with a forkserver that lives for one run."""

    def __init__(self, multiprocess: Executor, start_method: str):
        self._multiprocess = multiprocess
        self.start_method = start_method

    def execute(self, plan_context: PlanOrchestrationContext,
                execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        stop_forkserver()  # one left by an earlier run holds that run's environment
        try:
            yield from self._multiprocess.execute(plan_context, execution_plan)
        finally:
            stop_forkserver()

    @property
    def retries(self) -> RetryMode:
        return self._multiprocess.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._multiprocess.step_dependency_config


def _create(context: InitExecutorContext) -> Executor:
    config = with_forkserver_default(context.executor_config)
    executor = multi_or_in_process_executor.executor_creation_fn(  # type: ignore[misc]
        InitExecutorContext(job=context.job, executor_def=context.executor_def,
                            executor_config=config, instance=context.instance))
    start_method = next(iter(config.get("multiprocess", {}).get("start_method", {})), None)
    return ForkserverPerRun(executor, start_method) if start_method == "forkserver" else executor


reconciliation_executor = ExecutorDefinition(
    name=multi_or_in_process_executor.name,
    config_schema=multi_or_in_process_executor.config_schema.as_field(),
    requirements=multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_create,
    description="Dagster's default executor; its multiprocess mode starts steps from a "
                "forkserver that has imported the code location once per run.",
)


def selected_executor() -> ExecutorDefinition:
    """`RECON_EXECUTOR` where the code location loads — the daemon's run processes and
    every celery worker alike (README "Running on Celery"): `celery` sends each step to
    the dagster-celery workers (the optional extra `celery`); unset or `multiprocess`,
    `reconciliation_executor` (Dagster's default, its steps forked from a forkserver)."""
    name = os.environ.get("RECON_EXECUTOR", "").strip().lower()
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    if name not in ("", "multiprocess"):
        raise ValueError(f"RECON_EXECUTOR={name!r}: expected 'celery', 'multiprocess' or unset")
    return reconciliation_executor
