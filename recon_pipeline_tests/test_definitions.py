from recon_pipeline.definitions import defs
from recon_pipeline.resources import MongoResource, PostgresResource


def test_definitions_load_with_both_resources() -> None:
    resources = defs.resources or {}
    assert isinstance(resources["postgres"], PostgresResource)
    assert isinstance(resources["mongo"], MongoResource)


def test_reconciliation_report_wiring() -> None:
    from dagster import AssetKey
    from dagster._core.definitions.backfill_policy import BackfillPolicyType

    job = defs.resolve_job_def("reconciliation_job")
    asset = defs.resolve_assets_def(AssetKey("reconciliation_report"))
    assert asset.backfill_policy is not None
    assert (asset.backfill_policy.policy_type, asset.backfill_policy.max_partitions_per_run) == (
        BackfillPolicyType.MULTI_RUN, 24)
    assert asset.partitions_def is not None
    assert asset.partitions_def.get_first_partition_key() == "2026-01-01-00:00"
    assert sorted(key.name for key in asset.check_keys) == sorted([
        "no_unrepaired_mismatches", "mismatch_rate_below_threshold",
        "outbox_has_no_dead_letters", "mongo_reachable", "outbox_backlog_fresh"])
    ops = list(job.graph.nodes[0].definition.iterate_op_defs())  # type: ignore[attr-defined]
    assert len(ops) == 8 and {op.pool for op in ops} == {"reconciliation"}
