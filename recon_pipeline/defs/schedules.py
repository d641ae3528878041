"""`reconciliation_hourly` (running by default) and `reconciliation_full_daily` (stopped)."""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    schedule,
)

from recon_pipeline.defs.config import ReconciliationConfig, build_run_config
from recon_pipeline.defs.jobs import reconciliation_job
from recon_pipeline.defs.partitions import hourly_partitions, last_complete_hour


@schedule(name="reconciliation_hourly", cron_schedule="0 * * * *", job=reconciliation_job,
          execution_timezone=hourly_partitions.timezone,
          default_status=DefaultScheduleStatus.RUNNING)
def reconciliation_hourly(context: ScheduleEvaluationContext) -> RunRequest:
    # lookback_hours left unset: the run takes it from the mapping's settings, so a
    # changed mapping applies without redeploying the schedule.
    key = last_complete_hour(context.scheduled_execution_time)
    return RunRequest(run_key=key, partition_key=key,
                      run_config=build_run_config(ReconciliationConfig()))


@schedule(name="reconciliation_full_daily", cron_schedule="30 3 * * *", job=reconciliation_job,
          execution_timezone=hourly_partitions.timezone,
          default_status=DefaultScheduleStatus.STOPPED)
def reconciliation_full_daily(context: ScheduleEvaluationContext) -> RunRequest:
    # A partitioned job needs a partition for every run: the full scan is recorded
    # against the last complete hour.
    key = last_complete_hour(context.scheduled_execution_time)
    return RunRequest(run_key=f"full-{key}", partition_key=key,
                      run_config=build_run_config(ReconciliationConfig(full_scan=True)))
