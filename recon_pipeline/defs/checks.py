"""The six asset checks of `reconciliation_report` (SPEC 7): a report in, results out.

Pure: everything a check judges is in the finished report, plus what the report op looks
up for it (the warn threshold from the mapping, the outbox backlog and dead letters, the
history of finished reports). Each result's metadata says what the operator needs to act."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

from recon_pipeline.defs.config import ASSET_NAME
from recon_pipeline.engine.report import RunReport
from recon_pipeline.stores.outbox import Backlog, DeadLetters

if TYPE_CHECKING:
    import pandas as pd

BACKLOG_MAX_AGE = timedelta(hours=2)
HISTORY_SIZE = 48  # the usual range: the last 48 finished reports of the same kind
HISTORY_MIN = 12  # fewer than this: not enough history to say what is usual
MAD_FACTOR = 3
DEAD_IDS_SHOWN = 20  # the newest dead messages' ids, on the dead-letter check


@dataclass(frozen=True, slots=True)
class CheckInputs:
    report: RunReport
    mismatch_rate_warn: float
    backlog: Backlog = Backlog(0, None, None)
    dead: DeadLetters | None = None  # looked up when the run dead-lettered
    # The last finished reports of the same kind, this one excluded: `records_checked`,
    # `mismatches_found` (stores.reports.finished_history). None: not looked up.
    history: pd.DataFrame | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict[str, float | int | str | bool]


def _mismatches_command(report: RunReport) -> str:
    return f"recon-pipeline report --mismatches {report.id}"


def unrepaired(report: RunReport) -> int:
    """Mismatches left as they were: failed, over the repair limit, dry run, or orphans
    only reported (every status but `repaired` and `resolved`)."""
    return sum(_unrepaired_by_status(report).values())


def _unrepaired_by_status(report: RunReport) -> dict[str, int]:
    entities = report.details.get("entities", {}).values()
    return {column: sum(int(entity.get(column, 0)) for entity in entities)
            for column in ("repair_failed", "repair_skipped", "reported")}


def no_unrepaired_mismatches(inputs: CheckInputs) -> Verdict:
    report = inputs.report
    by_status = _unrepaired_by_status(report)
    left = sum(by_status.values())
    return Verdict(left == 0, f"{left} of {report.counts['mismatches_found']} "
                   "mismatches left unrepaired",
                   {"unrepaired": left, "mismatches_found": report.counts["mismatches_found"],
                    "repaired": report.counts["repaired"],
                    # failed: see repair_error; skipped: over repair_limit or a dry run;
                    # reported: orphans, kept while delete_orphans is off.
                    **{f"unrepaired_{name}": count for name, count in by_status.items()},
                    "list_them": _mismatches_command(report)})


def mismatch_rate_below_threshold(inputs: CheckInputs) -> Verdict:
    report, limit = inputs.report, inputs.mismatch_rate_warn
    rate = report.mismatch_rate
    # A rate equal to the threshold is not above it: the setting is "warn above".
    return Verdict(rate <= limit, f"mismatch rate {rate:.4%} (warn above {limit:.4%})",
                   {"mismatch_rate": rate, "mismatch_rate_warn": limit,
                    "mismatches_found": report.counts["mismatches_found"],
                    "records_checked": report.counts["records_checked"],
                    "list_them": _mismatches_command(report)})


def outbox_has_no_dead_letters(inputs: CheckInputs) -> Verdict:
    dead = inputs.report.counts["outbox_dead"]
    metadata: dict[str, float | int | str | bool] = {
        "outbox_dead": dead, "outbox_attempted": inputs.report.counts["outbox_attempted"]}
    if inputs.dead is not None:
        metadata |= {"dead_messages_total": inputs.dead.total,
                     "newest_dead_message_ids": ", ".join(map(str, inputs.dead.newest_ids)),
                     "newest_dead_error": inputs.dead.newest_error or ""}
    return Verdict(dead == 0, f"{dead} outbox messages went dead in this run", metadata)


def mongo_reachable(inputs: CheckInputs) -> Verdict:
    up = inputs.report.mongo_available
    return Verdict(up, "MongoDB answered" if up else
                   "MongoDB was unreachable: extraction, diff and repair were skipped",
                   {"mongo_available": up})


def outbox_backlog_fresh(inputs: CheckInputs) -> Verdict:
    backlog = inputs.backlog
    age = backlog.oldest_age
    hours = 0.0 if age is None else age.total_seconds() / 3600
    fresh = age is None or age <= BACKLOG_MAX_AGE
    text = ("no outbox message is due" if age is None
            else f"oldest due outbox message ({backlog.oldest_id}) is {hours:.2f} h old "
                 "(limit 2 h)")
    metadata: dict[str, float | int | str | bool] = {
        "oldest_due_hours": round(hours, 3), "due_messages": backlog.due}
    if backlog.oldest_id is not None:
        metadata["oldest_due_message_id"] = backlog.oldest_id
    return Verdict(fresh, text, metadata)


def mismatch_rate_in_usual_range(inputs: CheckInputs) -> Verdict:
    """This run's rate against median + 3 × MAD (median absolute deviation, unscaled) of
    the history's rates; a rate equal to the bound is within it."""
    rate = inputs.report.mismatch_rate
    kind = "full scan" if inputs.report.full_scan else "windowed"
    history = inputs.history
    size = 0 if history is None else len(history)
    metadata: dict[str, float | int | str | bool] = {
        "mismatch_rate": rate, "history_reports": size, "history_kind": kind}
    if history is None or size < HISTORY_MIN:
        return Verdict(True, f"not enough history: {size} finished {kind} reports, "
                       f"{HISTORY_MIN} needed", metadata)
    checked = history["records_checked"].astype("float64")
    # The same rate as RunReport.mismatch_rate: nothing checked counts as 0.
    rates = (history["mismatches_found"] / checked.where(checked > 0)).fillna(0.0)
    median = float(rates.median())
    mad = float((rates - median).abs().median())
    bound = median + MAD_FACTOR * mad
    metadata |= {"history_median": median, "history_mad": mad, "upper_bound": bound}
    return Verdict(rate <= bound, f"mismatch rate {rate:.4%} "
                   f"{'within' if rate <= bound else 'above'} the usual range (median "
                   f"{median:.4%} + 3 × MAD {mad:.4%} = {bound:.4%}, last {size} {kind} "
                   "reports)", metadata)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    severity: AssetCheckSeverity
    judge: Callable[[CheckInputs], Verdict]
    description: str  # what the UI shows on the check: what it means, what to do


CHECKS: tuple[Check, ...] = (
    Check("no_unrepaired_mismatches", AssetCheckSeverity.ERROR, no_unrepaired_mismatches,
          "Every mismatch found by the run was repaired or resolved. Fails when any is left: "
          "a failed repair (see repair_error), more than repair_limit mismatches (nothing "
          "repaired), a dry run, or orphans only reported (delete_orphans off). List them "
          "with `recon-pipeline report --mismatches <report_id>`."),
    Check("mismatch_rate_below_threshold", AssetCheckSeverity.WARN,
          mismatch_rate_below_threshold,
          "mismatches_found / records_checked is at most the mapping's mismatch_rate_warn. "
          "Above it, the dual writes lose more than usual: look at field_drift and "
          "mismatch_sample on the materialization for which entity and field drift."),
    Check("outbox_has_no_dead_letters", AssetCheckSeverity.WARN, outbox_has_no_dead_letters,
          "No outbox message went dead in this run. A dead message (max_attempts reached, or "
          "a malformed payload: last_error starts `invalid payload:`) is never retried: fix "
          "the producer; setting the message back to `pending` with attempts 0 retries it."),
    Check("mongo_reachable", AssetCheckSeverity.ERROR, mongo_reachable,
          "MongoDB answered at the start of the run. When it did not, only the outbox retry "
          "(stopping at the first failure, charging no attempt) and cleanup ran: check "
          "MONGODB_URL and the server; the next run catches up."),
    Check("outbox_backlog_fresh", AssetCheckSeverity.WARN, outbox_backlog_fresh,
          "The oldest outbox message due for delivery is at most 2 hours old. Older: "
          "deliveries keep failing (see last_error of oldest_due_message_id in "
          "outbox_messages) or the runs do not keep up."),
    Check("mismatch_rate_in_usual_range", AssetCheckSeverity.WARN, mismatch_rate_in_usual_range,
          "This run's mismatch rate is at most the median + 3 × MAD of the last 48 finished "
          "reports of the same kind (windowed or full scan); with fewer than 12 it passes. "
          "Above it, something changed: a deploy that writes MongoDB differently, a "
          "consumer that stopped. Compare field_drift with earlier materializations."),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)
# Checks stay unpartitioned: a range run has one report, not one per partition.
CHECK_SPECS = [AssetCheckSpec(name=check.name, asset=ASSET_NAME, description=check.description)
               for check in CHECKS]


def check_results(inputs: CheckInputs) -> list[AssetCheckResult]:
    results = []
    for check in CHECKS:
        verdict = check.judge(inputs)
        results.append(AssetCheckResult(
            check_name=check.name, passed=verdict.passed, severity=check.severity,
            description=verdict.description,
            metadata={"report_id": str(inputs.report.id), **verdict.metadata}))
    return results
