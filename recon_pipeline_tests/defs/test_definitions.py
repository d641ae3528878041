from recon_pipeline.definitions import defs
from recon_pipeline.defs.resources import MongoResource, PostgresResource


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
        "outbox_has_no_dead_letters", "mongo_reachable", "outbox_backlog_fresh",
        "mismatch_rate_in_usual_range"])
    ops = list(job.graph.nodes[0].definition.iterate_op_defs())  # type: ignore[attr-defined]
    assert len(ops) == 8 and {op.pool for op in ops} == {"reconciliation"}


def test_dagster_definitions_validate_passes(tmp_path) -> None:
    """The code location loads the way `dagster dev` and the daemon load it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MONGODB_URL")}
    env["DAGSTER_HOME"] = str(tmp_path)
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", "recon_pipeline.definitions"],
        capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
