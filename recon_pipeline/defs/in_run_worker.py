"""The coordinating steps of a multiprocess run, run in the run worker itself.

Six of a run's steps do milliseconds of work one after another (`IN_RUN_WORKER`: start,
outbox retry, planning, the repair decision, cleanup, the report), and a step process
costs 0.15 to 0.25 s before its first line: the fork, Dagster's instance and plan
rebuilt, a dozen events (benchmarks/PROFILE.md). Dagster's multiprocess executor starts
every step through `execute_step_out_of_process`; this module replaces that function in
Dagster's module with one that runs an IN_RUN_WORKER step of a run the executor has
registered (`coordinating_steps_in_run_worker`, defs/executor.py) in this process, and
hands every other step to Dagster's own. Dagster's executor loop, its concurrency,
retries and interruption are unchanged; celery and other executors never call it.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import dagster._core.executor.multiprocess as dagster_multiprocess
from dagster import DagsterEvent
from dagster._core.events import EngineEventData
from dagster._core.execution.api import create_execution_plan, execute_plan_iterator
from dagster._core.execution.retries import RetryMode

IN_RUN_WORKER_TAG = "recon_pipeline/in_run_worker"
IN_RUN_WORKER = {IN_RUN_WORKER_TAG: "true"}
# What the run worker's later steps import on first use (the report's checks: pandas,
# 0.2 s), imported on a thread once the first step process starts: the run worker only
# waits for that process, and the report step then finds it imported.
LATER_IMPORTS = ("pandas",)


# Runs whose IN_RUN_WORKER steps this process runs itself, by run id.
_RUNS_IN_THIS_WORKER: set[str] = set()
# Dagster's own, kept on its module so a second import of this one (a reload) finds it
_out_of_process = getattr(dagster_multiprocess, "recon_out_of_process",
                          dagster_multiprocess.execute_step_out_of_process)
dagster_multiprocess.recon_out_of_process = _out_of_process  # type: ignore[attr-defined]
_later_imports_started = threading.Event()


def _import_later_imports() -> None:
    """LATER_IMPORTS on a daemon thread, once per process."""
    if _later_imports_started.is_set():
        return
    _later_imports_started.set()

    def imports() -> None:
        for name in LATER_IMPORTS:
            with suppress(ImportError):
                importlib.import_module(name)

    threading.Thread(target=imports, name="recon-later-imports", daemon=True).start()


def _launch_step(multiproc_ctx: Any, recon_job: Any, step_context: Any, step: Any,
                 errors: Any, processes: Any, term_events: Any, retries: RetryMode,
                 known_state: Any, repository_load_data: Any) -> Iterator[Any]:
    """Dagster's multiprocess executor starts every step through this (its
    `execute_step_out_of_process`, replaced in its module once, below): an IN_RUN_WORKER
    step of a run in `coordinating_steps_in_run_worker` runs here, every other step in
    its own process."""
    if step_context.run_id in _RUNS_IN_THIS_WORKER:
        if (step.tags or {}).get(IN_RUN_WORKER_TAG) == IN_RUN_WORKER[IN_RUN_WORKER_TAG]:
            return _in_run_worker(recon_job, step_context, step, retries, known_state,
                                  repository_load_data)
        _import_later_imports()
    return _out_of_process(multiproc_ctx, recon_job, step_context, step, errors, processes,
                           term_events, retries, known_state, repository_load_data)


dagster_multiprocess.execute_step_out_of_process = _launch_step


def _in_run_worker(recon_job: Any, step_context: Any, step: Any, retries: RetryMode,
                   known_state: Any, repository_load_data: Any) -> Iterator[DagsterEvent]:
    """The step, as its process would run it (`MultiprocessExecutorChildProcessCommand`),
    in this process and with its instance. Its events are gathered before the first is
    handed on: Dagster's executor interleaves the steps it has started, and two steps of
    this process must not, as each redirects the process's stdout and stderr to its own
    log file while it runs."""
    yield DagsterEvent.engine_event(
        step_context, f'Executing step "{step.key}" in the run worker (pid {os.getpid()}).',
        EngineEventData())
    plan = create_execution_plan(job=recon_job, run_config=step_context.run_config,
                                 step_keys_to_execute=[step.key], known_state=known_state,
                                 repository_load_data=repository_load_data)
    yield from list(execute_plan_iterator(
        plan, recon_job, step_context.dagster_run, run_config=step_context.run_config,
        retry_mode=retries.for_inner_plan(), instance=step_context.instance))


@contextmanager
def coordinating_steps_in_run_worker(run_id: str) -> Iterator[None]:
    """While the block runs, run `run_id`'s IN_RUN_WORKER steps in this process."""
    _RUNS_IN_THIS_WORKER.add(run_id)
    try:
        yield
    finally:
        _RUNS_IN_THIS_WORKER.discard(run_id)
