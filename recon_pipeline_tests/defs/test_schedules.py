"""Schedules evaluated at a fixed tick: the previous hour's partition and a run config
the job accepts; and `recon_pipeline.run_config` itself."""

from datetime import UTC, datetime

import pytest
from dagster import (
    DagsterInstance,
    DagsterInvalidConfigError,
    DefaultScheduleStatus,
    build_schedule_context,
    validate_run_config,
)

import recon_pipeline
from recon_pipeline.definitions import defs
from recon_pipeline.defs.config import ASSET_NAME
from recon_pipeline.engine.window import WindowError

TICK = datetime(2026, 3, 5, 14, 0, tzinfo=UTC)


def tick(name: str) -> tuple[str | None, dict, str | None]:
    schedule = defs.resolve_schedule_def(name)
    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(instance=instance,
                                         repository_def=defs.get_repository_def(),
                                         scheduled_execution_time=TICK)
        [request] = schedule.evaluate_tick(context).run_requests or []
    return request.partition_key, request.run_config, request.run_key


def test_hourly_tick_runs_the_previous_hour_with_settings_lookback() -> None:
    schedule = defs.resolve_schedule_def("reconciliation_hourly")
    assert (schedule.cron_schedule, schedule.default_status) == (
        "0 * * * *", DefaultScheduleStatus.RUNNING)
    partition, run_config, run_key = tick("reconciliation_hourly")
    assert (partition, run_key) == ("2026-03-05-13:00", "2026-03-05-13:00")
    job = defs.resolve_job_def("reconciliation_job")
    resolved = validate_run_config(job, run_config)
    config = resolved["ops"]["reconciliation_report.start_run"]["config"]
    # None: the run takes lookback_hours from the mapping's settings.
    assert config == {"lookback_hours": None, "dry_run": False, "full_scan": False,
                      "entities": None, "window_start": None, "window_end": None}


def test_full_daily_is_a_full_scan_and_stopped_by_default() -> None:
    schedule = defs.resolve_schedule_def("reconciliation_full_daily")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    partition, run_config, _ = tick("reconciliation_full_daily")
    assert partition == "2026-03-05-13:00"
    validate_run_config(defs.resolve_job_def("reconciliation_job"), run_config)
    assert run_config["ops"]["reconciliation_report"]["config"]["full_scan"] is True


def test_run_config_has_exactly_the_spec_keys_and_validates() -> None:
    config = recon_pipeline.run_config(
        lookback_hours=6, dry_run=True, entities=["clients"],
        window_start=datetime(2026, 3, 1, tzinfo=UTC), window_end="2026-03-02T00:00:00Z")
    assert config == {"ops": {"reconciliation_report": {"config": {
        "lookback_hours": 6, "dry_run": True, "full_scan": False, "entities": ["clients"],
        "window_start": "2026-03-01T00:00:00+00:00",
        "window_end": "2026-03-02T00:00:00+00:00"}}}}
    validate_run_config(defs.resolve_job_def("reconciliation_job"), config)
    validate_run_config(defs.resolve_job_def("reconciliation_job"), {})  # all optional


@pytest.mark.parametrize("kwargs", [{"window_start": "2026-03-01T00:00Z"},
                                    {"window_start": "yesterday", "window_end": "today"},
                                    {"lookback_hours": -1}])
def test_run_config_rejects_a_bad_window(kwargs: dict) -> None:
    with pytest.raises(WindowError):
        recon_pipeline.run_config(**kwargs)


def test_unknown_run_config_key_is_rejected() -> None:
    with pytest.raises(DagsterInvalidConfigError, match="lookback_hourz"):
        validate_run_config(defs.resolve_job_def("reconciliation_job"),
                            {"ops": {"reconciliation_report": {"config": {"lookback_hourz": 1}}}})


def test_import_recon_pipeline_stays_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, recon_pipeline; "
            "print('dagster' in sys.modules, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_launchpad_shows_every_run_config_key_with_its_description() -> None:
    from recon_pipeline.defs.config import ReconciliationConfig

    job = defs.resolve_job_def("reconciliation_job")
    asset_config = job.graph.node_dict[ASSET_NAME].definition.config_mapping.config_schema
    fields = asset_config.config_type.fields
    assert set(fields) == {"lookback_hours", "dry_run", "full_scan", "entities",
                           "window_start", "window_end"}
    for name, field in fields.items():
        assert field.description == ReconciliationConfig.model_fields[name].description
        assert not field.is_required


def test_zero_lookback_is_a_valid_run_config() -> None:
    config = recon_pipeline.run_config(lookback_hours=0)
    assert config["ops"][ASSET_NAME]["config"]["lookback_hours"] == 0
