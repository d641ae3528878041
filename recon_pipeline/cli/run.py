"""`recon-pipeline run` and `report` (SPEC 8), and the report as text or JSON."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from recon_pipeline.defs.config import ReconciliationConfig, reconciliation_config, run_window
from recon_pipeline.engine.report import RunReport
from recon_pipeline.engine.window import WindowError
from recon_pipeline.local.environment import Environment
from recon_pipeline.model.mapping import MappingError
from recon_pipeline.stores import reports
from recon_pipeline.stores.postgres import connect_engine, load_mapping

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


def add_run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="one run of reconciliation_job")
    run.add_argument("--start", help="ISO 8601 start of the window judged (with --end)")
    run.add_argument("--end", help="ISO 8601 end (exclusive) of the window judged")
    run.add_argument("--lookback-hours", type=float,
                     help="judge the last H hours (default: lookback_hours of the mapping)")
    run.add_argument("--full-scan", action="store_true")
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--entity", action="append", dest="entities", metavar="NAME")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=cmd_run)
    report = commands.add_parser("report", help="recent reconciliation reports, or every "
                                 "mismatch of one")
    report.add_argument("--last", type=int, help="the N most recent reports (default 5)")
    report.add_argument("--mismatches", type=int, metavar="REPORT_ID",
                        help="every mismatch of that report, one line per drifted field")
    report.add_argument("--csv", action="store_true", help="with --mismatches: CSV")
    report.add_argument("--json", action="store_true")
    report.set_defaults(handler=cmd_report)


def options_from_args(args: argparse.Namespace, lookback_hours: float,
                      now: datetime) -> ReconciliationConfig:
    """--start/--end judge exactly that range; otherwise the last `lookback_hours`."""
    if (args.start is None) != (args.end is None):
        raise UsageError("--start and --end go together")
    if args.start is not None and args.lookback_hours is not None:
        raise UsageError("--lookback-hours cannot be combined with --start/--end")
    try:
        if args.start is not None:
            return reconciliation_config(dry_run=args.dry_run, full_scan=args.full_scan,
                                         entities=args.entities,
                                         window_start=args.start, window_end=args.end)
        hours = args.lookback_hours if args.lookback_hours is not None else lookback_hours
        if hours <= 0:
            raise UsageError(f"--lookback-hours must be positive, got {hours:g}")
        return reconciliation_config(dry_run=args.dry_run, full_scan=args.full_scan,
                                     entities=args.entities,
                                     window_start=now - timedelta(hours=hours), window_end=now)
    except WindowError as error:
        raise UsageError(str(error)) from None


def prepare(args: argparse.Namespace, env: Environment) -> tuple[ReconciliationConfig, datetime]:
    """Everything a run needs, checked before Dagster starts: bad config exits 2."""
    now = datetime.now(UTC)
    engine = connect_engine(env.database_url)
    try:
        config = load_mapping(env.config_path, engine)
        for name in args.entities or ():
            config.entity(name)
        options = options_from_args(args, config.settings.lookback_hours, now)
        window = run_window(config.settings, now, options, None)
    except (MappingError, WindowError) as error:
        raise UsageError(str(error)) from None
    finally:
        engine.dispose()
    return options, window.end


def cmd_run(args: argparse.Namespace, env: Environment) -> int:
    from recon_pipeline.cli.progress import progress_display
    from recon_pipeline.cli.runner import execute_reconciliation
    from recon_pipeline.defs.partitions import partition_covering

    options, window_end = prepare(args, env)
    with progress_display() as (show, interval):
        outcome = execute_reconciliation(env, options,
                                         partition_covering(window_end, datetime.now(UTC)),
                                         on_progress=show, progress_interval=interval)
    return print_outcome(env, outcome.report_id, outcome.run_id, outcome.errors,
                         as_json=args.json)


def print_outcome(env: Environment, report_id: int | None, run_id: str,
                  errors: tuple[str, ...], *, as_json: bool) -> int:
    report = read(env, report_id) if report_id is not None else None
    if report is None:
        detail = errors[0] if errors else "no report was written"
        raise RuntimeError(f"run {run_id} failed: {detail}")
    print(json.dumps(report.as_dict(), default=_json_default, indent=2) if as_json
          else format_report(report), flush=True)
    return EXIT_OK if report.status == "success" else EXIT_FAILED


def read(env: Environment, report_id: int) -> RunReport:
    engine = connect_engine(env.database_url)
    try:
        return RunReport.from_row(reports.read_report(engine, report_id))
    finally:
        engine.dispose()


def cmd_report(args: argparse.Namespace, env: Environment) -> int:
    if args.mismatches is not None:
        return report_mismatches(args, env)
    if args.csv:
        raise UsageError("--csv goes with --mismatches REPORT_ID")
    last = 5 if args.last is None else args.last
    if last < 1:
        raise UsageError("--last must be at least 1")
    engine = connect_engine(env.database_url)
    try:
        rows = [RunReport.from_row(r) for r in reports.recent_reports(engine, last)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], default=_json_default, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in rows) if rows else "no reports yet")
    return EXIT_OK


def report_mismatches(args: argparse.Namespace, env: Environment) -> int:
    from recon_pipeline.cli.mismatches import UnknownReport, print_mismatches

    if args.last is not None:
        raise UsageError("--last cannot be combined with --mismatches")
    if args.csv and args.json:
        raise UsageError("--csv and --json exclude each other")
    try:
        print_mismatches(env, args.mismatches, as_csv=args.csv, as_json=args.json)
    except UnknownReport as error:
        raise UsageError(str(error)) from None
    return EXIT_OK


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_report(report: RunReport) -> str:
    c = report.counts
    start = "full scan" if report.full_scan else (
        report.window_start.isoformat() if report.window_start else "?")
    end = report.window_end.isoformat() if report.window_end else "?"
    lines = [
        f"report {report.id}  status {report.status}  run {report.run_id}",
        f"  window {start} -> {end}  partition {report.partition_key or '-'}"
        f"{'  DRY RUN' if report.dry_run else ''}"
        f"{'' if report.mongo_available else '  MongoDB UNREACHABLE'}",
        f"  checked {c['records_checked']}  mismatches {c['mismatches_found']} "
        f"(missing {c['missing_in_mongo']}, field {c['field_mismatches']}, "
        f"orphans {c['orphans_in_mongo']})  rate {report.mismatch_rate:.2%}",
        f"  repaired {c['repaired']}  failed {c['repair_failed']}  "
        f"skipped {c['repair_skipped']}",
        f"  outbox attempted {c['outbox_attempted']}  sent {c['outbox_sent']} "
        f"(stale {c['outbox_stale']})  failed {c['outbox_failed']}  dead {c['outbox_dead']}",
        f"  cleanup idempotency keys {c['idempotency_keys_deleted']}  "
        f"outbox messages {c['outbox_messages_deleted']}",
    ]
    for name, row in sorted(report.details.get("entities", {}).items()):
        lines.append(
            f"  {name:<16} checked {row['records_checked']:>7}  missing "
            f"{row['missing_in_mongo']:>5}  field {row['field_mismatches']:>5}  orphans "
            f"{row['orphans_in_mongo']:>5}  repaired {row['repaired']:>5}"
            + (f"  errors: {'; '.join(row['errors'])}" if row.get("errors") else ""))
    return "\n".join(lines)


def demo_run(env: Environment) -> int:
    """`demo`'s run: the last `lookback_hours`, report printed; the status as exit code."""
    args = argparse.Namespace(start=None, end=None, lookback_hours=None, full_scan=False,
                              dry_run=False, entities=None, json=False)
    return cmd_run(args, env)
