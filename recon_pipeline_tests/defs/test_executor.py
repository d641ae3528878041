"""The executor out of process: Dagster's default, its coordinating steps run in the run
worker, the others forked from a forkserver that preloaded the code location, started
afresh for every run as the run starts."""

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, Executor, InitExecutorContext, reconstructable
from dagster._core.execution.retries import RetryMode
from dagster._core.system_config.objects import ResolvedRunConfig
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.cli.runner import reconciliation_job_def
from recon_pipeline.definitions import defs
from recon_pipeline.defs.executor import (
    FORKSERVER_STARTED,
    PRELOAD_MODULES,
    MultiprocessRun,
    instance_modules,
    preload_modules,
    reconciliation_executor,
    with_forkserver_default,
)
from recon_pipeline.defs.forkserver import DAGSTER_FIRST
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline_tests.dagster_support import seed, start_run_worker


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
    assert isinstance(executor, MultiprocessRun)
    assert executor.start_method == "forkserver"
    assert executor.preload == tuple(PRELOAD_MODULES)  # an ephemeral instance adds none


def test_the_multiprocess_config_users_give_keeps_the_forkserver_default() -> None:
    executor = executor_for({"multiprocess": {"max_concurrent": 4}})
    assert isinstance(executor, MultiprocessRun)
    assert executor.start_method == "forkserver"


def test_an_explicit_start_method_is_kept() -> None:
    executor = executor_for({"multiprocess": {"start_method": {"spawn": {}}}})
    assert isinstance(executor, MultiprocessRun)  # its coordinating steps in the run worker
    assert executor.start_method == "spawn"
    assert executor.preload == ()


def test_in_process_is_dagsters_own() -> None:
    assert type(executor_for({"in_process": {}})).__name__ == "InProcessExecutor"


def test_a_postgresql_instance_adds_its_storage_to_the_preload(
        dagster_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step process would import dagster-postgres for itself (0.27 s); a SQLite or
    in-memory instance needs nothing more than Dagster."""
    with DagsterInstance.ephemeral() as instance:
        assert instance_modules(instance) == ()
        assert preload_modules(instance) == list(PRELOAD_MODULES)
    (tmp_path / "dagster.yaml").write_text(
        (Path(__file__).resolve().parents[2] / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_postgres_url)
    with DagsterInstance.get() as instance:
        assert instance_modules(instance) == (
            "dagster_postgres.event_log.event_log", "dagster_postgres.run_storage.run_storage",
            "dagster_postgres.schedule_storage.schedule_storage", "psycopg2.extras")


def test_the_default_names_the_modules_to_preload() -> None:
    assert with_forkserver_default({"multiprocess": {"max_concurrent": 2}}) == {
        "multiprocess": {"max_concurrent": 2, "start_method": {
            "forkserver": {"preload_modules": list(PRELOAD_MODULES)}}}}
    assert with_forkserver_default({"in_process": {}}) == {"in_process": {}}


@pytest.mark.parametrize("name", [*PRELOAD_MODULES, "psycopg2.extras"])
def test_every_preloaded_module_imports(name: str) -> None:
    """The forkserver skips a name that fails to import: a moved module would cost every
    step its import again, silently. This says so on the Dagster upgrade that moves it."""
    importlib.import_module(name)


def send_probe(connection: Any) -> None:
    """Runs in a process forked from the forkserver: what it sees of the environment."""
    connection.send(os.environ.get("RECON_EXECUTOR_PROBE"))
    connection.close()


class RunLog:
    """The run's log manager, as far as an engine event goes: its messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def log_dagster_event(self, level: int, msg: str, dagster_event: Any) -> None:
        self.messages.append(msg)


class RunContext:
    """What `MultiprocessRun` reads of the run's plan context."""

    run_id = "a-run"
    job_name = "reconciliation_job"

    def __init__(self) -> None:
        self.log = RunLog()


class ForksOneStep(Executor):
    """Stands in for Dagster's multiprocess executor: one step forked from the forkserver."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.forkserver_running: list[bool] = []
        self.forkserver_programs: list[bytes] = []

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        server = multiprocessing.forkserver._forkserver
        pid = server._forkserver_pid  # type: ignore[attr-defined]
        self.forkserver_running.append(pid is not None)
        context = multiprocessing.get_context("forkserver")
        receiver, sender = context.Pipe(duplex=False)
        step = context.Process(target=send_probe, args=(sender,))
        step.start()
        self.seen.append(receiver.recv())
        step.join()
        # Once it has forked a step: a forkserver just spawned may still be in its exec.
        pid = server._forkserver_pid  # type: ignore[attr-defined]
        self.forkserver_programs.append(Path(f"/proc/{pid}/cmdline").read_bytes())
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
        list(MultiprocessRun(inner, "forkserver").execute(
            RunContext(), None))  # type: ignore[arg-type]
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
        list(MultiprocessRun(inner, "forkserver").execute(
            RunContext(), None))  # type: ignore[arg-type]
    finally:
        context.set_forkserver_preload(preloaded)
    assert inner.seen == [None]  # one step ran, forked from that forkserver
    assert server._forkserver_pid is None  # type: ignore[attr-defined]
    assert not probe.exists()


def test_the_forkserver_starts_with_the_run_and_its_preload(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Started before the first step, so its imports overlap the run worker's own steps;
    given Dagster's first module and then the executor's preload."""
    probe = tmp_path / "teardown"
    monkeypatch.setenv("RECON_TEARDOWN_PROBE", str(probe))
    server = multiprocessing.forkserver._forkserver
    preloaded = server._preload_modules  # type: ignore[attr-defined]
    try:
        inner = ForksOneStep()
        list(MultiprocessRun(inner, "forkserver", (
            "recon_pipeline_tests.defs.forkserver_teardown_probe",)).execute(
            RunContext(), None))  # type: ignore[arg-type]
        assert server._preload_modules == [  # type: ignore[attr-defined]
            DAGSTER_FIRST, "recon_pipeline_tests.defs.forkserver_teardown_probe"]
    finally:
        multiprocessing.get_context("forkserver").set_forkserver_preload(preloaded)
    assert inner.forkserver_running == [True]
    assert inner.seen == [None]
    assert not probe.exists()  # stopped at the end of the run, not torn down


def test_beside_threads_a_fork_is_not_safe_from_the_forkserver_is_a_new_interpreter() -> None:
    """A thread the executor does not know (a client's monitor, a user's thread) may hold
    a lock at the moment of a fork, held for ever in the copy: the forkserver is then a
    fresh interpreter, and the run's log says why its first step waits."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, name="not dagster's")
    other.start()
    context, inner = RunContext(), ForksOneStep()
    try:
        list(MultiprocessRun(inner, "forkserver", ("json",)).execute(
            context, None))  # type: ignore[arg-type]
    finally:
        stop.set()
        other.join()
    assert context.log.messages == [FORKSERVER_STARTED[False]]
    [program] = inner.forkserver_programs
    assert b"from multiprocessing.forkserver import main" in program
    assert inner.seen == [None]


def test_a_run_worker_runs_the_coordinating_steps_and_keeps_its_output(
        pg_url: str, pg_engine: Any, mongo_db: Database[Any], config: ReconConfig,
        dagster_postgres_url: str, tmp_path: Path) -> None:
    """A run worker as the daemon starts one: its own process, the job's default executor.
    Each coordinating step it runs itself sends the process's stdout and stderr to the
    step's log file while it runs; the steps go one at a time, so both streams are the run
    worker's again after the run (interleaved, they were left in a step's file). Its main
    thread is its only one, so its forkserver is a fork of it."""
    seed(pg_engine, mongo_db, config, clients=3)
    worker = start_run_worker(pg_url, mongo_db, dagster_postgres_url, tmp_path / "home")
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-2000:]
    *_, forkserver, outcome, steps = out.splitlines()
    assert outcome.split()[1:] == ["success"]  # after the run id
    assert forkserver == f"forkserver: {FORKSERVER_STARTED[True]}"
    assert steps == ("run worker: clean_up_op decide_repairs_op plan_chunks_op retry_outbox "
                     "start_run write_report")
    assert err.splitlines()[-1] == "stderr is the run worker's"
