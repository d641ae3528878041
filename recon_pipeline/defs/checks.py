"""The five asset checks of `reconciliation_report` (SPEC 7): a report in, results out.

Pure: everything a check judges is in the finished report, plus two figures the report
op looks up (the warn threshold from the mapping, the age of the outbox backlog)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

from recon_pipeline.defs.config import ASSET_NAME
from recon_pipeline.engine.report import RunReport

BACKLOG_MAX_AGE = timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class CheckInputs:
    report: RunReport
    mismatch_rate_warn: float
    oldest_due_age: timedelta | None  # the oldest outbox message still due; None: none is


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict[str, float | int | str | bool]


def unrepaired(report: RunReport) -> int:
    """Mismatches left as they were: failed, over the repair limit, dry run, or orphans
    only reported (every status but `repaired` and `resolved`)."""
    return sum(entity.get("repair_failed", 0) + entity.get("repair_skipped", 0)
               + entity.get("reported", 0)
               for entity in report.details.get("entities", {}).values())


def no_unrepaired_mismatches(inputs: CheckInputs) -> Verdict:
    left = unrepaired(inputs.report)
    return Verdict(left == 0, f"{left} of {inputs.report.counts['mismatches_found']} "
                   "mismatches left unrepaired",
                   {"unrepaired": left, "mismatches_found": inputs.report.counts[
                       "mismatches_found"], "repaired": inputs.report.counts["repaired"]})


def mismatch_rate_below_threshold(inputs: CheckInputs) -> Verdict:
    rate, limit = inputs.report.mismatch_rate, inputs.mismatch_rate_warn
    # A rate equal to the threshold is not above it: the setting is "warn above".
    return Verdict(rate <= limit, f"mismatch rate {rate:.4%} (warn above {limit:.4%})",
                   {"mismatch_rate": rate, "mismatch_rate_warn": limit,
                    "records_checked": inputs.report.counts["records_checked"]})


def outbox_has_no_dead_letters(inputs: CheckInputs) -> Verdict:
    dead = inputs.report.counts["outbox_dead"]
    return Verdict(dead == 0, f"{dead} outbox messages went dead in this run",
                   {"outbox_dead": dead,
                    "outbox_attempted": inputs.report.counts["outbox_attempted"]})


def mongo_reachable(inputs: CheckInputs) -> Verdict:
    up = inputs.report.mongo_available
    return Verdict(up, "MongoDB answered" if up else
                   "MongoDB was unreachable: extraction, diff and repair were skipped",
                   {"mongo_available": up})


def outbox_backlog_fresh(inputs: CheckInputs) -> Verdict:
    age = inputs.oldest_due_age
    hours = 0.0 if age is None else age.total_seconds() / 3600
    fresh = age is None or age <= BACKLOG_MAX_AGE
    text = ("no outbox message is due" if age is None
            else f"oldest due outbox message is {hours:.2f} h old (limit 2 h)")
    return Verdict(fresh, text, {"oldest_due_hours": round(hours, 3)})


CHECKS: tuple[tuple[str, AssetCheckSeverity, Callable[[CheckInputs], Verdict]], ...] = (
    ("no_unrepaired_mismatches", AssetCheckSeverity.ERROR, no_unrepaired_mismatches),
    ("mismatch_rate_below_threshold", AssetCheckSeverity.WARN, mismatch_rate_below_threshold),
    ("outbox_has_no_dead_letters", AssetCheckSeverity.WARN, outbox_has_no_dead_letters),
    ("mongo_reachable", AssetCheckSeverity.ERROR, mongo_reachable),
    ("outbox_backlog_fresh", AssetCheckSeverity.WARN, outbox_backlog_fresh),
)
CHECK_NAMES = tuple(name for name, _, _ in CHECKS)
# Checks stay unpartitioned: a range run has one report, not one per partition.
CHECK_SPECS = [AssetCheckSpec(name=name, asset=ASSET_NAME) for name in CHECK_NAMES]


def check_results(inputs: CheckInputs) -> list[AssetCheckResult]:
    results = []
    for name, severity, judge in CHECKS:
        verdict = judge(inputs)
        results.append(AssetCheckResult(
            check_name=name, passed=verdict.passed, severity=severity,
            description=verdict.description,
            metadata={"report_id": inputs.report.id, **verdict.metadata}))
    return results
