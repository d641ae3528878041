"""`recon-pipeline report --mismatches REPORT_ID [--csv | --json]`: every mismatch of one
report, field by field, for the operator who wants more than the 20 of `mismatch_sample`.
Streamed: a report with a million mismatches lists in flat memory."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable

from recon_pipeline.local.environment import Environment
from recon_pipeline.stores import reports
from recon_pipeline.stores.postgres import connect_engine
from recon_pipeline.stores.reports import MISMATCH_LINE_COLUMNS, MismatchLine


class UnknownReport(LookupError):
    """No report has that id: a bad argument."""


def print_mismatches(env: Environment, report_id: int, *, as_csv: bool,
                     as_json: bool) -> None:
    engine = connect_engine(env.database_url)
    try:
        if not reports.report_exists(engine, report_id):
            raise UnknownReport(f"report {report_id} not found "
                                "(`recon-pipeline report` lists the recent ones)")
        lines = reports.iter_mismatch_lines(engine, report_id)
        if as_csv:
            write_csv(lines)
        elif as_json:
            write_json(lines)
        else:
            write_text(report_id, lines)
    finally:
        engine.dispose()


def write_csv(lines: Iterable[MismatchLine]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(MISMATCH_LINE_COLUMNS)
    writer.writerows(line.as_tuple() for line in lines)


def write_json(lines: Iterable[MismatchLine]) -> None:
    sys.stdout.write("[")
    for index, line in enumerate(lines):
        sys.stdout.write(("," if index else "") + "\n  "
                         + json.dumps(dict(zip(MISMATCH_LINE_COLUMNS, line.as_tuple(),
                                               strict=True)), ensure_ascii=False))
    sys.stdout.write("\n]\n")


def write_text(report_id: int, lines: Iterable[MismatchLine]) -> None:
    count = 0
    for line in lines:
        if not count:
            print(f"{'entity':<16} {'key':<14} {'kind':<17} {'field':<20} "
                  "source -> target  repair_status")
        count += 1
        change = (f"{line.source_value} -> {line.target_value}" if line.field else "-")
        error = f"  ({line.repair_error})" if line.repair_error else ""
        print(f"{line.entity:<16} {line.key:<14} {line.kind:<17} {line.field or '-':<20} "
              f"{change}  {line.repair_status}{error}")
    print(f"report {report_id}: {count} mismatch lines" if count
          else f"report {report_id}: no mismatches", flush=True)
