"""`reconciliation_report`: one report per run, materialized by a graph of ops.

outbox retry → plan chunks → diff each chunk (fanned out) → decide repairs → repair each
batch (fanned out) → cleanup → report (+ the five checks)."""

from typing import Any

from dagster import BackfillPolicy, ConfigMapping, graph_asset

from recon_pipeline.checks import CHECK_SPECS
from recon_pipeline.ops import (
    RUN_CONFIG_SCHEMA,
    clean_up_op,
    decide_repairs_op,
    diff_chunk_op,
    plan_chunks_op,
    repair_batch_op,
    retry_outbox,
    start_run,
    write_report,
)
from recon_pipeline.partitions import hourly_partitions
from recon_pipeline.run_options import ASSET_NAME


def _to_start_run(config: dict[str, Any]) -> dict[str, Any]:
    return {"start_run": {"config": config}}


@graph_asset(
    name=ASSET_NAME,
    description="Audit trail of one reconciliation run: PostgreSQL vs the MongoDB read model.",
    partitions_def=hourly_partitions,
    # A backfill runs up to 24 hours per run: one report covering the run's range.
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=24),
    check_specs=CHECK_SPECS,
    config=ConfigMapping(config_schema=RUN_CONFIG_SCHEMA, config_fn=_to_start_run),
)
def reconciliation_report() -> dict[str, Any]:
    ticket = start_run()
    outbox = retry_outbox(ticket)
    chunks = plan_chunks_op(ticket, after_outbox=outbox).map(diff_chunk_op).collect()
    batches, decision = decide_repairs_op(ticket, chunks)
    repaired = batches.map(repair_batch_op).collect()
    cleanup = clean_up_op(ticket, repaired)
    outputs = write_report(ticket, outbox, chunks, decision, cleanup)
    # The graph returns the asset output and one output per check, keyed as Dagster names them.
    return {"result": outputs.result,
            **{spec.get_python_identifier(): getattr(outputs, spec.name) for spec in CHECK_SPECS}}
