"""The code location: wiring only."""

from dagster import Definitions

from recon_pipeline.resources import default_resources

defs = Definitions(resources=default_resources())
