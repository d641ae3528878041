"""One run of `reconciliation_job` under the multiprocess executor as a run worker makes it:
in a process of its own, which loads the code location and then executes the run. The
executor runs the coordinating steps in this process (defs/in_run_worker.py), so a run made in
the benchmark's own process would find pandas and the rest imported by an earlier run;
a daemon's run worker never does. Timed from `execute_job`, as Dagster times a run.

    python -m benchmarks.run_worker '<spec>'     # benchmarks/paths.py `run_worker` writes it

The spec (JSON): `options` for `recon_pipeline.run_config`, `tags`, `execution` (the
executor config, or null for the job's default) and `instance`: "temp" for a temporary
SQLite-backed one, "home" for DAGSTER_HOME's. Prints the run's figures as JSON: wall and
CPU seconds of the run, the instance's set-up, success, the run's events (type, step key,
timestamp) with the report id it materialized, and whether its forkserver was forked
from the run worker (null: the run started none).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

RESULT_MARK = "recon-bench-run-worker: "


def main(argv: list[str] | None = None) -> None:
    spec = json.loads((argv or sys.argv[1:])[0])
    from dagster import DagsterInstance, execute_job, reconstructable

    import recon_pipeline
    import recon_pipeline.definitions  # noqa: F401 - the code location, loaded first
    from benchmarks.paths import QUIET_INSTANCE, report_id_of, run_events
    from recon_pipeline.cli.runner import QUIET_LOGGERS, reconciliation_job_def
    from recon_pipeline.defs.executor import FORKSERVER_STARTED

    run_config: dict[str, Any] = {**recon_pipeline.run_config(**spec["options"]),
                                  **QUIET_LOGGERS}
    if spec.get("execution") is not None:
        run_config["execution"] = {"config": {"multiprocess": spec["execution"]}}
    with ExitStack() as stack:
        began = time.perf_counter()
        if spec["instance"] == "temp":
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="recon-bench-dagster-"))
            instance = stack.enter_context(
                DagsterInstance.local_temp(tempdir=home, overrides=QUIET_INSTANCE))
        else:
            instance = stack.enter_context(DagsterInstance.get())
        made = time.perf_counter() - began
        started, cpu = time.perf_counter(), time.process_time()
        # Not `with execute_job(...)`: entering the result sets up the job's resources in
        # this process to load outputs, and with them the run lock, held after the run.
        result = execute_job(reconstructable(reconciliation_job_def), instance=instance,
                             tags=spec["tags"], run_config=run_config)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        records = instance.all_logs(result.run_id)
        events = run_events(records)
        report_id = report_id_of(r.dagster_event for r in records if r.dagster_event)
        forked = next((was for r in records for was, message in FORKSERVER_STARTED.items()
                       if r.user_message == message), None)
        if not result.success:  # what failed, for the bench's error
            for event in (r.dagster_event for r in records if r.dagster_event):
                if event.is_step_failure:
                    print(event.step_key, event.step_failure_data.error, file=sys.stderr)
    print(RESULT_MARK + json.dumps({
        "wall": wall, "cpu": cpu, "instance": made, "success": result.success,
        "run_id": result.run_id, "report_id": report_id, "events": events,
        "forkserver_forked": forked}))


if __name__ == "__main__":
    main()
