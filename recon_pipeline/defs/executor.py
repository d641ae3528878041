"""The executor of `reconciliation_job` when it runs out of process (the daemon, `dagster
dev`, `execute_job`): Dagster's default `multi_or_in_process_executor`, same config. Its
multiprocess mode differs from Dagster's in three ways, all for the cost of a run's
steps (benchmarks/PROFILE.md):

- The run's coordinating steps (`IN_RUN_WORKER`, defs/in_run_worker.py: start, outbox
  retry, planning, the repair decision, cleanup, the report) run in the run worker itself,
  one at a time. They do milliseconds of work, and a step process costs ~0.15-0.25 s to
  start, plan and log its way to its first line; the parallel steps (diff chunks, repair
  batches) still get a process each.
- Each step process starts from a forkserver unless the run config names a
  `start_method`. Dagster's own default, `spawn`, starts a fresh interpreter for every
  step, which imports dagster and this code location again: seconds per step. A
  forkserver imports them once per run (`preload_modules`), and each step is a fork of it.
- That forkserver (defs/forkserver.py) is started as the run starts, as a fork of the run
  worker where that is safe (the run workers `dagster dev`, the daemon and `execute_job`
  start), so it has their imports at once; else as a fresh interpreter, whose imports
  overlap the coordinating steps before the first chunk.

`execute_in_process` (the CLI, the tests) never gets here.

The forkserver is started for each run and stopped when the run ends: a step forked from
it sees the environment (`DATABASE_URL`, ...) of the moment the forkserver started, so a
process that makes several runs (a test session, a notebook) must not hand a later run a
forkserver started for an earlier one. Dagster's run workers make one run per process;
two multiprocess runs at once in one process (threads) would stop each other's."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagster import (
    DagsterEvent,
    DagsterInstance,
    Executor,
    ExecutorDefinition,
    InitExecutorContext,
    multi_or_in_process_executor,
)
from dagster._core.events import EngineEventData

from recon_pipeline.defs.forkserver import forkserver_pid, start_forkserver, stop_forkserver
from recon_pipeline.defs.in_run_worker import coordinating_steps_in_run_worker

if TYPE_CHECKING:
    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan
    from dagster._core.execution.retries import RetryMode
    from dagster._core.execution.step_dependency_config import StepDependencyConfig

# What a step process would otherwise import for itself, found by listing the modules a
# step adds to the preloaded ones: the code location (dagster, SQLAlchemy, pymongo and the
# engine come with it) and the module `reconstructable(reconciliation_job_def)` points at;
# the source's driver (SQLAlchemy imports it on first connect); and what Dagster loads
# lazily in a step (instance, IO manager paths, compute logs, secrets). The instance's
# storage is added per run (`instance_modules`). The forkserver skips a name that does not
# import (a later Dagster moving a private module costs its import, never a step).
PRELOAD_MODULES = (
    "recon_pipeline.definitions",
    "recon_pipeline.cli.runner",
    "recon_pipeline.local.embedded",
    "psycopg",
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
# Modules a storage imports only when it first connects, by the storage's package.
STORAGE_DRIVERS = {"dagster_postgres": ("psycopg2.extras",)}

# The engine event a run logs as its forkserver starts, by whether it was forked.
FORKSERVER_STARTED = {
    True: "Forkserver forked from the run worker: its steps start with what it imported",
    False: "Forkserver started as a new interpreter (the run worker runs threads a fork "
           "would not be safe from, or cannot count them): the first step waits for its "
           "imports",
}


def instance_modules(instance: DagsterInstance) -> tuple[str, ...]:
    """The modules of the instance's storages that Dagster's own import does not bring
    (dagster-postgres: 0.27 s per step that would import it), with their drivers."""
    storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
    modules = sorted({type(s).__module__ for s in storages if s is not None})
    modules = [m for m in modules if not m.startswith("dagster.")]
    packages = dict.fromkeys(m.split(".")[0] for m in modules)
    return (*modules, *(d for p in packages for d in STORAGE_DRIVERS.get(p, ())))


def preload_modules(instance: DagsterInstance | None) -> list[str]:
    return [*PRELOAD_MODULES, *(instance_modules(instance) if instance is not None else ())]


def with_forkserver_default(config: Mapping[str, Any],
                            preload: Sequence[str] = PRELOAD_MODULES) -> dict[str, Any]:
    """The executor config, with the multiprocess mode's start method defaulting to a
    forkserver that preloads `preload`; an explicit `start_method` (spawn, say) is kept."""
    multiprocess = config.get("multiprocess")
    if multiprocess is None or multiprocess.get("start_method"):
        return dict(config)
    return {"multiprocess": {**multiprocess, "start_method": {
        "forkserver": {"preload_modules": list(preload)}}}}


class MultiprocessRun(Executor):
    """Dagster's multiprocess executor for one run, its coordinating steps run in the run
    worker (defs/in_run_worker.py); with the forkserver start method, a forkserver of the
    run's own, started as the run starts."""

    def __init__(self, multiprocess: Executor, start_method: str | None,
                 preload: Sequence[str] = ()):
        self._multiprocess = multiprocess
        self.start_method = start_method
        self.preload = tuple(preload)

    def execute(self, plan_context: PlanOrchestrationContext,
                execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        forkserver = self.start_method == "forkserver"
        try:
            if forkserver:
                stop_forkserver()  # one left by an earlier run holds that run's environment
                if self.preload:  # else Dagster's executor picks the preload at its first step
                    forked = start_forkserver(self.preload)
                    yield DagsterEvent.engine_event(plan_context, FORKSERVER_STARTED[forked],
                                                    EngineEventData(metadata={
                                                        "forkserver pid": forkserver_pid()}))
            with coordinating_steps_in_run_worker(plan_context.run_id):
                yield from self._multiprocess.execute(plan_context, execution_plan)
        finally:
            if forkserver:
                stop_forkserver()

    @property
    def retries(self) -> RetryMode:
        return self._multiprocess.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._multiprocess.step_dependency_config


def _create(context: InitExecutorContext) -> Executor:
    config = with_forkserver_default(context.executor_config,
                                     preload_modules(context.instance))
    executor = multi_or_in_process_executor.executor_creation_fn(  # type: ignore[misc]
        InitExecutorContext(job=context.job, executor_def=context.executor_def,
                            executor_config=config, instance=context.instance))
    if "multiprocess" not in config:
        return executor
    start_method = config["multiprocess"].get("start_method") or {}
    method = next(iter(start_method), None)
    preload = (start_method.get("forkserver") or {}).get("preload_modules") or ()
    return MultiprocessRun(executor, method, preload)


reconciliation_executor = ExecutorDefinition(
    name=multi_or_in_process_executor.name,
    config_schema=multi_or_in_process_executor.config_schema.as_field(),
    requirements=multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_create,
    description="Dagster's default executor; its multiprocess mode runs the coordinating "
                "steps in the run worker and forks the others from a forkserver that has "
                "imported the code location once per run.",
)


def selected_executor() -> ExecutorDefinition:
    """`RECON_EXECUTOR` where the code location loads — the daemon's run processes and
    every celery worker alike (README "Running on Celery"): `celery` sends each step to
    the dagster-celery workers (the optional extra `celery`); unset or `multiprocess`,
    `reconciliation_executor` (Dagster's default, its parallel steps forked from a
    forkserver)."""
    name = os.environ.get("RECON_EXECUTOR", "").strip().lower()
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    if name not in ("", "multiprocess"):
        raise ValueError(f"RECON_EXECUTOR={name!r}: expected 'celery', 'multiprocess' or unset")
    return reconciliation_executor
