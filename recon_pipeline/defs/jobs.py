"""`reconciliation_job`: the report asset and its six checks."""

from dagster import AssetSelection, define_asset_job

from recon_pipeline.defs.config import ASSET_NAME

reconciliation_job = define_asset_job(
    "reconciliation_job",
    selection=AssetSelection.assets(ASSET_NAME),  # includes the asset's checks
    description="Outbox retry, diff, repair, cleanup and report for one partition (range).",
)
