"""Thin ops: unpack context and config, call the engine, emit events.

Only small frozen values travel between ops (ids, the window, chunk bounds, counts): under
the multiprocess executor they are pickled to disk between steps, so each op re-reads what
it needs from the databases itself.

No `from __future__ import annotations` here: Dagster reads the op signatures' real
annotations (a string `OpExecutionContext` is rejected at definition time).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckResult,
    DynamicOut,
    DynamicOutput,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    multi_or_in_process_executor,
    op,
)

from recon_pipeline.defs.checks import (
    CHECK_NAMES,
    DEAD_IDS_SHOWN,
    HISTORY_SIZE,
    CheckInputs,
    check_results,
)
from recon_pipeline.defs.config import ReconciliationConfig, run_window
from recon_pipeline.defs.in_run_worker import IN_RUN_WORKER
from recon_pipeline.defs.metadata import SAMPLE_ROWS, report_metadata
from recon_pipeline.defs.resources import MappingResource, MongoResource, PostgresResource, RunLock
from recon_pipeline.engine.extract import ChunkPlan, ChunkResult, key_range_chunks, plan_chunks
from recon_pipeline.engine.progress import PROGRESS_EXTRA, PROGRESS_INTERVAL, ChunkProgress
from recon_pipeline.engine.repair import repair_batch
from recon_pipeline.engine.report import (
    finish_report,
    record_chunk,
    record_figures,
    record_repairs,
)
from recon_pipeline.engine.run_steps import (
    RunScope,
    begin_run,
    clean_up_counts,
    decide_repairs,
    retry_outbox_counts,
    safe_diff_chunk,
    utc_now,
)
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.stores import reports
from recon_pipeline.stores.mongo import reachable, serves_key_ranges
from recon_pipeline.stores.outbox import dead_letters, outbox_backlog
from recon_pipeline.stores.schema import missing_index_warning
from recon_pipeline.stores.source import updated_at_index_missing

POOL = "reconciliation"
# The ops that coordinate a run (all but the chunks and the repair batches) are tagged
# IN_RUN_WORKER: under the multiprocess executor they run in the run worker, one at a
# time, instead of a process each (defs/in_run_worker.py).

@dataclass(frozen=True, slots=True)
class RunTicket:
    """What every op of one run needs to know, decided once by `start_run`."""

    run_id: str
    report_id: int
    window: RunWindow
    dry_run: bool
    entities: tuple[str, ...]
    mongo_available: bool


@dataclass(frozen=True, slots=True)
class ChunkTask:
    ticket: RunTicket
    chunk: ChunkPlan


@dataclass(frozen=True, slots=True)
class RepairTask:
    ticket: RunTicket
    id_range: tuple[int, int]


def partition_label(context: OpExecutionContext) -> str | None:
    if context.has_partition_key_range:
        keys = context.partition_key_range
        return keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"
    return context.partition_key if context.has_partition_key else None


@op(pool=POOL, tags=IN_RUN_WORKER)
def start_run(context: OpExecutionContext, config: ReconciliationConfig,
              postgres: PostgresResource, mongo: MongoResource, mapping: MappingResource,
              run_lock: RunLock) -> RunTicket:
    """Window, report row, MongoDB reachability. `run_lock` is held from here to the end
    of the run, under any executor (see RunLock)."""
    now = utc_now()
    partitioned = context.has_partition_key or context.has_partition_key_range
    span = context.partition_time_window if partitioned else None
    engine = postgres.engine
    recon = mapping.load(engine)
    window = run_window(recon.settings, now, config,
                        (span.start, span.end) if span else None)
    scope = RunScope(run_id=context.run_id, window=window,
                     partition_key=partition_label(context), dry_run=config.dry_run,
                     entities=config.entity_names)
    entities = scope.entity_names(recon)  # an unknown entity fails before any write
    report_id = begin_run(engine, scope, now)
    available = reachable(mongo.unchecked_database)
    context.log.info(f"report {report_id}: window {window.start.isoformat()} - "
                     f"{window.end.isoformat()} full_scan={window.full_scan} "
                     f"mongo_available={available}")
    return RunTicket(context.run_id, report_id, window, config.dry_run, entities, available)


# Where the two run one after the other (in process, and in the run worker under the
# multiprocess executor) the outbox retry goes first, so a run that fails while planning
# has delivered the outbox all the same; celery workers run them side by side.
FIRST = {"dagster/priority": "1"}


@op(pool=POOL, tags={**FIRST, **IN_RUN_WORKER})
def retry_outbox(context: OpExecutionContext, ticket: RunTicket, postgres: PostgresResource,
                 mongo: MongoResource, mapping: MappingResource) -> dict:
    """Runs even when MongoDB is down: delivery stops at the first connection failure. The
    counts reach the report row batch by batch: a run that fails later keeps them."""
    engine, db = postgres.engine, mongo.unchecked_database
    counts = retry_outbox_counts(
        engine, db, mapping.load(engine),
        progress=lambda so_far: record_figures(engine, ticket.report_id, so_far))
    record_figures(engine, ticket.report_id, counts)
    context.log.info(f"outbox: {counts}")
    return counts


# Run tag forcing the chunk plan: "true" plans key-range chunks, "false" one chunk per
# entity, whatever the executor and server (tests use it to exercise bounded chunks).
KEY_RANGE_CHUNKS_TAG = "recon_pipeline/key_range_chunks"
PROGRESS_INTERVAL_TAG = "recon_pipeline/progress_interval"
# Executors that run every step in the run's own process (`execute_in_process` foists
# the second onto the job; the default executor runs in process when configured so).
IN_PROCESS_EXECUTORS = frozenset({"in_process", "execute_in_process_executor"})


def runs_steps_in_process(context: OpExecutionContext) -> bool:
    """Whether this run's steps all run in one process, one after the other: then chunks
    gain nothing (memory is bounded by streaming either way). Read from the job's
    executor and the run config's `execution` block: the multiprocess, celery, docker
    and k8s executors run steps out of process."""
    executor = context.job_def.executor_def.name
    if executor in IN_PROCESS_EXECUTORS:
        return True
    if executor != multi_or_in_process_executor.name:
        return False
    execution = context.run_config.get("execution") or {}
    chosen = execution.get("config") if isinstance(execution, dict) else None
    return isinstance(chosen, dict) and "in_process" in chosen


def wants_key_ranges(context: OpExecutionContext, mongo: MongoResource) -> bool:
    """See `key_range_chunks`; the run tag KEY_RANGE_CHUNKS_TAG overrides it."""
    forced = context.run_tags.get(KEY_RANGE_CHUNKS_TAG)
    if forced is not None:
        return forced.strip().lower() == "true"
    parallel = not runs_steps_in_process(context)
    return key_range_chunks(  # the server is asked only when it matters
        parallel=parallel,
        server_serves_ranges=parallel and serves_key_ranges(mongo.unchecked_database))


@op(pool=POOL, out=DynamicOut(ChunkTask), tags=IN_RUN_WORKER)
def plan_chunks_op(context: OpExecutionContext, ticket: RunTicket, postgres: PostgresResource,
                   mongo: MongoResource,
                   mapping: MappingResource) -> Iterator[DynamicOutput[ChunkTask]]:
    if not ticket.mongo_available:
        context.log.warning("MongoDB unreachable: extraction, diff and repair skipped")
        return
    engine = postgres.engine
    config = mapping.load(engine)
    if not ticket.window.full_scan:
        for name in ticket.entities:
            entity = config.entity(name)
            if updated_at_index_missing(engine, entity):
                context.log.warning(missing_index_warning(entity))
    key_ranges = wants_key_ranges(context, mongo)
    chunks = plan_chunks(engine, config, ticket.window, ticket.entities,
                         key_ranges=key_ranges)
    context.log.info(f"planned {len(chunks)} chunks "
                     f"({'key ranges' if key_ranges else 'one per entity'})")
    for chunk in chunks:
        yield DynamicOutput(ChunkTask(ticket, chunk), mapping_key=chunk.name)


def progress_interval(context: OpExecutionContext) -> float:
    """Seconds between progress lines within a chunk; the run tag PROGRESS_INTERVAL_TAG
    overrides it (tests: 0 reports every batch read)."""
    return float(context.run_tags.get(PROGRESS_INTERVAL_TAG, PROGRESS_INTERVAL))


@op(pool=POOL, ins={"after_outbox": In(Nothing)})
def diff_chunk_op(context: OpExecutionContext, task: ChunkTask, postgres: PostgresResource,
                  mongo: MongoResource, mapping: MappingResource) -> Output[ChunkResult]:
    """After the outbox retry (`after_outbox`): what it delivered is not drift. Logs the
    chunk's progress (`ChunkProgress`, in the record's PROGRESS_EXTRA attribute for
    whoever renders it: the CLI) and times the chunk in its metadata."""
    ticket = task.ticket
    engine, db = postgres.engine, mongo.unchecked_database
    last: list[ChunkProgress] = []

    def report(progress: ChunkProgress) -> None:
        last[:] = [progress]
        context.log.info(progress.line(), extra={PROGRESS_EXTRA: progress.as_dict()})

    result = safe_diff_chunk(engine, db, mapping.load(engine), ticket.report_id,
                             ticket.window, task.chunk, utc_now(), progress=report,
                             progress_interval=progress_interval(context))
    record_chunk(engine, ticket.report_id, result)
    context.log.info(f"chunk {task.chunk.name}: {result}")
    seconds = last[0].seconds if last else 0.0
    return Output(result, metadata={
        "rows": result.records_checked,
        "rows_per_second": round(last[0].rate if last else 0.0, 1),
        "mismatches": (result.missing_in_mongo + result.field_mismatches
                       + result.orphans_in_mongo),
        "seconds": round(seconds, 3)})


@op(pool=POOL, tags=IN_RUN_WORKER,
    out={"batches": DynamicOut(RepairTask), "decision": Out(str | None)})  # type: ignore[arg-type]
def decide_repairs_op(context: OpExecutionContext, ticket: RunTicket,
                      chunk_results: list, postgres: PostgresResource,
                      mapping: MappingResource) -> Iterator[Any]:
    """Waits for every chunk (`chunk_results` only orders it): the repair limit counts
    the whole run's mismatches."""
    if not ticket.mongo_available:
        yield Output(None, "decision")
        return
    engine = postgres.engine
    decision = decide_repairs(engine, mapping.load(engine), ticket.report_id,
                              dry_run=ticket.dry_run)
    record_repairs(engine, ticket.report_id)
    context.log.info(f"repair decision: {decision.action.value}, "
                     f"{len(decision.batches)} batches")
    yield Output(decision.action.value, "decision")
    for low, high in decision.batches:
        yield DynamicOutput(RepairTask(ticket, (low, high)), output_name="batches",
                            mapping_key=f"ids_{low}_{high}")


@op(pool=POOL)
def repair_batch_op(context: OpExecutionContext, task: RepairTask, postgres: PostgresResource,
                    mongo: MongoResource, mapping: MappingResource) -> int:
    """A MongoDB error ends repair for the run without failing the step (SPEC 6,
    Repair): cleanup and the report still run."""
    engine, db = postgres.engine, mongo.unchecked_database
    looked_at = repair_batch(engine, db, mapping.load(engine), task.ticket.report_id,
                             task.id_range, utc_now())
    record_repairs(engine, task.ticket.report_id)
    return looked_at


@op(pool=POOL, tags=IN_RUN_WORKER)
def clean_up_op(context: OpExecutionContext, ticket: RunTicket, repaired: list,
                postgres: PostgresResource, mapping: MappingResource) -> dict:
    """After repairs (`repaired` only orders it)."""
    engine = postgres.engine
    counts = clean_up_counts(engine, mapping.load(engine), utc_now())
    record_figures(engine, ticket.report_id, counts)
    context.log.info(f"cleanup: {counts}")
    return counts


@op(pool=POOL, tags=IN_RUN_WORKER, out={"result": Out(Nothing),
                    **{name: Out(is_required=False) for name in CHECK_NAMES}})
def write_report(context: OpExecutionContext, ticket: RunTicket, outbox_counts: dict,
                 chunk_results: list, decision: str | None, cleanup_counts: dict,
                 postgres: PostgresResource, mapping: MappingResource) -> Iterator[Any]:
    """Completes the report row; emits it as materialization metadata and the checks.
    The asset output is `Nothing`: a range run's output cannot go through an IO manager."""
    now = utc_now()
    engine = postgres.engine
    config = mapping.load(engine)
    report = finish_report(
        engine, ticket.report_id, chunks=chunk_results, outbox=outbox_counts,
        cleanup=cleanup_counts, mongo_available=ticket.mongo_available, finished_at=now,
        extra_details={"repair_decision": decision})
    context.log.info(f"report {report.id}: {report.status}")
    yield Output(None, "result", metadata=report_metadata(
        report, reports.field_drift(engine, report.id),
        reports.mismatch_lines(engine, report.id, SAMPLE_ROWS)))
    results: list[AssetCheckResult] = check_results(CheckInputs(
        report, config.settings.mismatch_rate_warn,
        backlog=outbox_backlog(engine, now),
        dead=dead_letters(engine, DEAD_IDS_SHOWN) if report.counts["outbox_dead"] else None,
        history=reports.finished_history(engine, report.id, full_scan=report.full_scan,
                                         last=HISTORY_SIZE)))
    yield from results
