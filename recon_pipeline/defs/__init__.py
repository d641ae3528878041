"""The Dagster code location: the graph asset and its thin ops, checks, metadata, the job,
schedules, partitions, resources and the run config. It calls the engine; nothing below it
imports dagster."""
