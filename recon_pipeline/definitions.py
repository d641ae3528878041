"""The code location: wiring only."""

from dagster import Definitions

from recon_pipeline.defs.assets import reconciliation_report
from recon_pipeline.defs.executor import selected_executor
from recon_pipeline.defs.jobs import reconciliation_job
from recon_pipeline.defs.resources import default_resources
from recon_pipeline.defs.schedules import reconciliation_full_daily, reconciliation_hourly

defs = Definitions(
    assets=[reconciliation_report],
    jobs=[reconciliation_job],
    schedules=[reconciliation_hourly, reconciliation_full_daily],
    resources=default_resources(),
    executor=selected_executor(),  # RECON_EXECUTOR: ours (forkserver) or celery
)
