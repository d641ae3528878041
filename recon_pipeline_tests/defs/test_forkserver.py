"""The forkserver forked from the run worker (defs/forkserver.py), seen from a run worker
of its own: recon_pipeline_tests/defs/forked_forkserver_probe.py, run as a process with
the threads a code server's run worker holds. This test process may run other threads,
so the probe, not this process, forks."""

import json
import subprocess
import sys
from typing import Any

import pytest

from recon_pipeline_tests.dagster_support import child_env
from recon_pipeline_tests.defs.forked_forkserver_probe import BUFFERED


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What recon_pipeline_tests/defs/forked_forkserver_probe.py saw, in a run worker of
    its own (this test process may run threads of its own), and what it left behind."""
    out = tmp_path_factory.mktemp("forked")
    env = child_env()
    env.pop("PYTHONUNBUFFERED", None)  # its stdout, a pipe, is then block-buffered
    done = subprocess.run(
        [sys.executable, "-m", "recon_pipeline_tests.defs.forked_forkserver_probe", str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    seen["stdout"] = done.stdout.splitlines()[:-1]
    finalized = out / "finalized"
    seen["finalized by"] = finalized.read_text().split() if finalized.exists() else []
    return seen


def test_a_run_worker_beside_dagsters_own_threads_forks_its_forkserver(
        forked: dict[str, Any]) -> None:
    """The threads a run worker runs when the code server starts it (Dagster's termination
    watch, the feeder of the queue its events go out by) hold nothing a fork's child uses:
    the forkserver is a fork of the run worker, the same program with what it imported,
    and a step forked from it has that too."""
    assert forked["threads"] == ["MainThread", "QueueFeederThread", "termination-handler"]
    assert forked["forked"] is True
    assert forked["same_program"] is True  # not `python -c "from multiprocessing..."`
    step = forked["step"]
    assert step["parent"] == forked["forkserver"] != forked["pid"]
    assert step["colorsys"] is True  # imported by the run worker alone


def test_a_step_never_finalizes_what_the_run_worker_left_to_collect(
        forked: dict[str, Any]) -> None:
    """An unreachable object (a connection, say) copied into the forkserver is finalized by
    the run worker alone: finalized in a step, it would close the run worker's end too."""
    assert forked["finalized by"] == [str(forked["pid"])]


def test_a_step_never_writes_the_run_workers_buffered_output_again(
        forked: dict[str, Any]) -> None:
    """What the run worker's stdout held when it forked is written once: flushed before the
    fork, not again by each step as it exits."""
    assert forked["stdout"] == [BUFFERED]
