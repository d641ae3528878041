"""`reconciliation_report`: one report per run, materialized by a graph of ops.

outbox retry and plan chunks (side by side) → diff each chunk (fanned out) → decide
repairs → repair each batch (fanned out) → cleanup → report (+ the six checks). This graph
is the only place where the steps of a run are put in order: the CLI, the tests and the
benchmarks run it through `reconciliation_job`."""

from typing import Any

from dagster import (
    BackfillPolicy,
    ConfigMapping,
    HookContext,
    failure_hook,
    graph_asset,
    success_hook,
)

from recon_pipeline.defs.checks import CHECK_SPECS
from recon_pipeline.defs.config import ASSET_NAME, ReconciliationConfig
from recon_pipeline.defs.ops import (
    clean_up_op,
    decide_repairs_op,
    diff_chunk_op,
    plan_chunks_op,
    repair_batch_op,
    retry_outbox,
    start_run,
    write_report,
)
from recon_pipeline.defs.partitions import hourly_partitions


@failure_hook(required_resource_keys={"run_lock"})
def run_lock_on_failure(context: HookContext) -> None:
    """A failed op fails the run: free the run lock once none of its steps runs any more."""
    context.resources.run_lock.mark_failed(context.run_id)


@success_hook(required_resource_keys={"run_lock"})
def release_run_lock(context: HookContext) -> None:
    """After the last op: the next run may start."""
    context.resources.run_lock.release(context.run_id)


# Every op carries a hook that needs `run_lock`, so every step's process sets it up, and
# with it takes or re-enters the run lock (RunLock): the lock spans the whole run under
# any executor, and in whatever job the asset is materialized (UI, schedule, backfill).
HOOKS = {run_lock_on_failure}


def _to_start_run(config: dict[str, Any]) -> dict[str, Any]:
    return {"start_run": {"config": config}}


@graph_asset(
    name=ASSET_NAME,
    description="Audit trail of one reconciliation run: PostgreSQL vs the MongoDB read model.",
    partitions_def=hourly_partitions,
    # A backfill runs up to 24 hours per run: one report covering the run's range.
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=24),
    check_specs=CHECK_SPECS,
    config=ConfigMapping(config_schema=ReconciliationConfig.to_config_schema(),
                         config_fn=_to_start_run),
)
def reconciliation_report() -> dict[str, Any]:
    ticket = start_run.with_hooks(HOOKS)()
    outbox = retry_outbox.with_hooks(HOOKS)(ticket)
    # Planning reads only PostgreSQL, which the outbox does not write: it runs beside the
    # outbox retry (a step's start-up saved out of process); each chunk waits for both.
    diff_chunk = diff_chunk_op.with_hooks(HOOKS)
    chunks = plan_chunks_op.with_hooks(HOOKS)(ticket).map(
        lambda task: diff_chunk(task, after_outbox=outbox)).collect()
    batches, decision = decide_repairs_op.with_hooks(HOOKS)(ticket, chunks)
    repaired = batches.map(repair_batch_op.with_hooks(HOOKS)).collect()
    cleanup = clean_up_op.with_hooks(HOOKS)(ticket, repaired)
    outputs = write_report.with_hooks({*HOOKS, release_run_lock})(
        ticket, outbox, chunks, decision, cleanup)
    # The graph returns the asset output and one output per check, keyed as Dagster names them.
    return {"result": outputs.result,
            **{spec.get_python_identifier(): getattr(outputs, spec.name) for spec in CHECK_SPECS}}
