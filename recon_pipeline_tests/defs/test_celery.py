"""Scale-out for real (SPEC 7): `reconciliation_job` under dagster-celery's executor, on
the RabbitMQ broker of this machine, with two celery workers started here as README
"Running on Celery" starts them. The run's steps execute in the workers, its report
counts what an in-process run counts on the same data, and an in-process run started
while it holds the run lock waits for it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster import DagsterEventType, DagsterInstance, ExecuteInProcessResult
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import reports, run_lock
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import REPO, child_env, seed, write_dagster_home
from recon_pipeline_tests.defs.test_run_lock import (
    CLIENTS,
    PARTITION,
    WINDOW,
    assert_consistent,
    assert_first_run,
    assert_later_run,
    assert_one_at_a_time,
    in_process_run,
    once_a_run_holds_the_lock,
)

pytestmark = pytest.mark.celery

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
BROKER_URL = f"pyamqp://guest@{BROKER_HOST}:{BROKER_PORT}//"
BIN = Path(sys.executable).parent
WORKERS = ("recon-w1", "recon-w2")
DEADLINE_SECONDS = 240  # a worker's start, a run: seconds each, on a loaded machine


def broker_answers() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class CeleryDeployment:
    config_yaml: Path  # one file for the workers (`-y`) and the run config
    env: dict[str, str]
    workers: tuple[Worker, ...]
    queue: str
    run: subprocess.Popen[str]  # the celery run's process, loaded, waiting for a line


def celery_env(pg_url: str, mongo_db: Database[Any], home: dict[str, str]) -> dict[str, str]:
    """What the run's process and every worker need: the code location on celery, the
    broker, the databases, the Dagster instance (its storage and the steps' outputs)."""
    return child_env(
        RECON_EXECUTOR="celery", CELERY_BROKER_URL=BROKER_URL,
        DATABASE_URL=pg_url, MONGODB_URL=mongo_url_of(mongo_db),
        MONGODB_DATABASE=mongo_db.name, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        **home)


def start_worker(name: str, deployment_yaml: Path, queue: str, env: dict[str, str],
                 log: Path) -> Worker:
    """`dagster-celery worker start`, one step at a time, the code location imported
    before the pool forks, in a session of its own so that stopping it stops the celery
    process it runs."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
             "-y", str(deployment_yaml), "-q", queue, "-n", name,
             "-i", "recon_pipeline.definitions", "--loglevel", "INFO",
             "--", "--concurrency=1", "--without-mingle", "--without-gossip"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(name, process, log)


def wait_until_ready(workers: tuple[Worker, ...]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    waiting = list(workers)
    while waiting and time.monotonic() < deadline:
        for worker in list(waiting):
            assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.output()}"
            if f"{worker.name}@" in worker.output() and " ready." in worker.output():
                waiting.remove(worker)
        threading.Event().wait(0.1)
    assert not waiting, "\n".join(f"{w.name} not ready:\n{w.output()}" for w in waiting)


def stop(worker: Worker) -> None:
    """Warm shutdown (SIGTERM) of the worker's session, SIGKILL if it does not end."""
    if worker.process.poll() is None:
        os.killpg(worker.process.pid, signal.SIGTERM)
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


def delete_queue(queue: str) -> None:
    """The test's queue and its messages go; nothing is left for a later run."""
    from kombu import Connection

    with Connection(BROKER_URL, connect_timeout=10) as connection:
        channel = connection.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)


@pytest.fixture
def deployment(pg_url: str, mongo_db: Database[Any], dagster_postgres_url: str,
               tmp_path: Path) -> Iterator[CeleryDeployment]:
    if not broker_answers():
        reason = (f"no RabbitMQ broker answers at {BROKER_HOST}:{BROKER_PORT}: the celery "
                  "executor test needs one (apt-get install rabbitmq-server)")
        if os.environ.get("RECON_TEST_CELERY") == "required":  # .ci/run: never skipped
            pytest.fail(reason)
        pytest.skip(reason)
    queue = f"recon-test-{uuid.uuid4().hex[:12]}"  # this test's alone: leftovers never meet
    config_yaml = tmp_path / "celery.yaml"
    config_yaml.write_text(yaml.safe_dump({"execution": {"config": {
        "backend": "rpc://",
        # A worker takes the next step only when its step is done, so parallel chunks
        # spread over both workers.
        "config_source": {"task_default_queue": queue, "task_acks_late": True,
                          # The processes' rpc:// reply queues go a minute after their use.
                          "result_expires": 60},
    }}}))
    env = celery_env(pg_url, mongo_db, write_dagster_home(tmp_path / "home",
                                                           dagster_postgres_url))
    workers = tuple(start_worker(name, config_yaml, queue, env, tmp_path / f"{name}.log")
                    for name in WORKERS)
    run = start_celery_run(config_yaml, env)  # loads while the workers start
    try:
        wait_until_ready(workers)
        yield CeleryDeployment(config_yaml, env, workers, queue, run)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for worker in workers:
            stop(worker)
        delete_queue(queue)


CELERY_RUN = textwrap.dedent("""
    import json, sys
    from dagster import DagsterInstance, execute_job, reconstructable
    from recon_pipeline.cli.runner import reconciliation_job_def
    run_config, partition = json.loads(sys.argv[1]), sys.argv[2]
    assert reconciliation_job_def().executor_def.name == "celery"
    sys.stdin.readline()  # the test's go, once the data is seeded
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(reconciliation_job_def), instance=instance,
                             run_config=run_config, tags={"dagster/partition": partition})
        print(json.dumps({"run_id": result.run_id, "success": result.success}))
""")


def start_celery_run(config_yaml: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """The run as the daemon's run process starts it: the code location loaded with
    `RECON_EXECUTOR=celery`, the run config carrying the workers' celery.yaml. It starts
    the run when it reads a line."""
    run_config = {**recon_pipeline.run_config(**WINDOW), **yaml.safe_load(config_yaml.read_text())}
    return subprocess.Popen(
        [sys.executable, "-c", CELERY_RUN, json.dumps(run_config, default=str), PARTITION],
        env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def step_keys_by_worker(run_id: str, env: dict[str, str]) -> dict[str, set[str]]:
    """From the run's event log: which worker executed which step (dagster-celery's
    engine event "Executing steps … in celery worker" names the worker). The instance
    is the workers' (`DAGSTER_POSTGRES_URL` set by the caller)."""
    by_worker: dict[str, set[str]] = {}
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            metadata = entry.dagster_event.event_specific_data.metadata  # type: ignore[union-attr]
            if "Celery worker" in metadata and entry.step_key:
                worker = str(metadata["Celery worker"].value).partition("@")[0]
                by_worker.setdefault(worker, set()).add(entry.step_key)
        started = {entry.step_key for entry in instance.all_logs(
            run_id, of_type=DagsterEventType.STEP_START)}
    assert set().union(*by_worker.values()) == started, (by_worker, started)
    return by_worker


def test_a_celery_run_on_two_workers_counts_as_in_process_and_never_overlaps_another_run(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    deployment: CeleryDeployment, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded = seed(pg_engine, mongo_db, config, clients=CLIENTS)
    in_process: list[tuple[ExecuteInProcessResult, list[str]]] = []
    launcher = once_a_run_holds_the_lock(
        pg_engine, lambda: in_process.append(in_process_run(pg_url, mongo_db,
                                                            wait_seconds=600)))
    celery_run = deployment.run
    try:
        out, err = celery_run.communicate("go\n", timeout=DEADLINE_SECONDS)
    finally:
        launcher.join(timeout=DEADLINE_SECONDS)
    assert celery_run.returncode == 0, err
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["success"], err
    celery_id = outcome["run_id"]

    [(result, messages)] = in_process
    assert result.success
    assert any(f"waits for the run lock, held by run {celery_id}" in m for m in messages)
    rows = sorted(reports.recent_reports(pg_engine, 5), key=lambda r: r["started_at"])
    assert_one_at_a_time(rows, {celery_id, result.run_id})
    assert rows[0]["run_id"] == celery_id
    assert_first_run(rows[0], seeded)  # the figures an in-process run reports on this data
    assert_later_run(rows[1], seeded)
    assert_consistent(pg_engine, mongo_db, seeded)
    assert run_lock.current_holder(pg_engine) is None

    # Every step ran in a worker, both workers took some (the chunks run in parallel),
    # and each worker's own log names the steps it ran, in a process of its own.
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", deployment.env["DAGSTER_POSTGRES_URL"])
    by_worker = step_keys_by_worker(celery_id, deployment.env)
    assert set(by_worker) == set(WORKERS), by_worker
    step_pids: dict[str, set[int]] = {}
    for worker in deployment.workers:
        succeeded = {match["step"]: int(match["pid"]) for match in re.finditer(
            rf"{celery_id} - (?P<pid>\d+) - (?P<step>\S+) - STEP_SUCCESS", worker.output())}
        assert set(succeeded) == by_worker[worker.name], (worker.name, worker.output())
        step_pids[worker.name] = set(succeeded.values())
    assert step_pids[WORKERS[0]].isdisjoint(step_pids[WORKERS[1]]), step_pids
    assert not {os.getpid(), celery_run.pid} & set().union(*step_pids.values()), step_pids


def test_recon_executor_selects_the_executor_and_names_what_it_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recon_pipeline.defs.executor import reconciliation_executor, selected_executor

    monkeypatch.delenv("RECON_EXECUTOR", raising=False)
    assert selected_executor() is reconciliation_executor  # multiprocess, forkserver
    monkeypatch.setenv("RECON_EXECUTOR", "multiprocess")
    assert selected_executor() is reconciliation_executor
    monkeypatch.setenv("RECON_EXECUTOR", " Celery ")
    executor = selected_executor()
    assert executor is not None and executor.name == "celery"
    monkeypatch.setenv("RECON_EXECUTOR", "k8s")
    with pytest.raises(ValueError, match="RECON_EXECUTOR='k8s': expected 'celery', "
                       "'multiprocess' or unset"):
        selected_executor()
