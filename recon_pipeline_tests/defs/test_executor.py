"""The executor out of process: Dagster's default, with steps forked from a forkserver that
preloaded the code location, started afresh for every run."""

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, Executor, InitExecutorContext, reconstructable
from dagster._core.execution.retries import RetryMode
from dagster._core.system_config.objects import ResolvedRunConfig

import recon_pipeline
from recon_pipeline.cli.runner import reconciliation_job_def
from recon_pipeline.definitions import defs
from recon_pipeline.defs.executor import (
    PRELOAD_MODULES,
    ForkserverPerRun,
    reconciliation_executor,
    with_forkserver_default,
)


def executor_for(execution: dict[str, Any] | None) -> Executor:
    """The executor the job builds out of process for `execution` (None: the default)."""
    job = defs.resolve_job_def("reconciliation_job")
    run_config = {**recon_pipeline.run_config(),
                  **({"execution": {"config": execution}} if execution is not None else {})}
    resolved = ResolvedRunConfig.build(job, run_config)
    with DagsterInstance.ephemeral() as instance:
        return reconciliation_executor.executor_creation_fn(  # type: ignore[misc]
            InitExecutorContext(job=reconstructable(reconciliation_job_def),
                                executor_def=job.executor_def,
                                executor_config=resolved.execution.execution_engine_config,
                                instance=instance))


def test_the_job_runs_under_the_reconciliation_executor() -> None:
    job = defs.resolve_job_def("reconciliation_job")
    assert job.executor_def is reconciliation_executor
    assert job.executor_def.name == "multi_or_in_process_executor"


def test_by_default_steps_fork_from_the_preloaded_forkserver() -> None:
    executor = executor_for(None)
    assert isinstance(executor, ForkserverPerRun)
    assert executor.start_method == "forkserver"


def test_the_multiprocess_config_users_give_keeps_the_forkserver_default() -> None:
    executor = executor_for({"multiprocess": {"max_concurrent": 4}})
    assert isinstance(executor, ForkserverPerRun)


@pytest.mark.parametrize(("execution", "kind"), [
    ({"multiprocess": {"start_method": {"spawn": {}}}}, "MultiprocessExecutor"),
    ({"in_process": {}}, "InProcessExecutor"),
])
def test_an_explicit_choice_is_kept(execution: dict[str, Any], kind: str) -> None:
    assert type(executor_for(execution)).__name__ == kind


def test_the_default_names_the_modules_to_preload() -> None:
    assert with_forkserver_default({"multiprocess": {"max_concurrent": 2}}) == {
        "multiprocess": {"max_concurrent": 2, "start_method": {
            "forkserver": {"preload_modules": list(PRELOAD_MODULES)}}}}
    assert with_forkserver_default({"in_process": {}}) == {"in_process": {}}


@pytest.mark.parametrize("name", PRELOAD_MODULES)
def test_every_preloaded_module_imports(name: str) -> None:
    """The forkserver skips a name that fails to import: a moved module would cost every
    step its import again, silently. This says so on the Dagster upgrade that moves it."""
    importlib.import_module(name)


def send_probe(connection: Any) -> None:
    """Runs in a process forked from the forkserver: what it sees of the environment."""
    connection.send(os.environ.get("RECON_EXECUTOR_PROBE"))
    connection.close()


class ForksOneStep(Executor):
    """Stands in for Dagster's multiprocess executor: one step forked from the forkserver."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        context = multiprocessing.get_context("forkserver")
        receiver, sender = context.Pipe(duplex=False)
        step = context.Process(target=send_probe, args=(sender,))
        step.start()
        self.seen.append(receiver.recv())
        step.join()
        yield from ()

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED


def test_each_run_gets_a_forkserver_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step sees the environment of the moment its run started, not of an earlier run
    in the same process (a test session, a notebook); no forkserver outlives its run."""
    inner = ForksOneStep()
    for value in ("first run", "second run"):
        monkeypatch.setenv("RECON_EXECUTOR_PROBE", value)
        list(ForkserverPerRun(inner, "forkserver").execute(None, None))  # type: ignore[arg-type]
        server = multiprocessing.forkserver._forkserver
        assert server._forkserver_pid is None  # type: ignore[attr-defined]
    assert inner.seen == ["first run", "second run"]


def test_a_run_stops_its_forkserver_without_tearing_down_its_interpreter(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The forkserver has imported Dagster and the code location: an orderly exit would
    tear that interpreter down at the end of every run (its atexit hooks run, here the
    probe's); it is ended at once instead."""
    probe = tmp_path / "teardown"
    monkeypatch.setenv("RECON_TEARDOWN_PROBE", str(probe))
    context = multiprocessing.get_context("forkserver")
    server = multiprocessing.forkserver._forkserver
    preloaded = server._preload_modules  # type: ignore[attr-defined]
    context.set_forkserver_preload(["recon_pipeline_tests.defs.forkserver_teardown_probe"])
    try:
        inner = ForksOneStep()
        list(ForkserverPerRun(inner, "forkserver").execute(None, None))  # type: ignore[arg-type]
    finally:
        context.set_forkserver_preload(preloaded)
    assert inner.seen == [None]  # one step ran, forked from that forkserver
    assert server._forkserver_pid is None  # type: ignore[attr-defined]
    assert not probe.exists()
