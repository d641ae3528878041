"""`make demo` records in the instance `make dev` serves: `python -m
recon_pipeline.local.dev demo` (what the Makefile runs) sets DAGSTER_HOME to the project's
`.dagster_home` with its PostgreSQL-backed dagster.yaml, then runs `recon-pipeline demo`;
the instance then holds the materialization and the six check evaluations, and a second
demo adds a second point."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pymongo.database import Database

from recon_pipeline.defs.checks import CHECK_NAMES
from recon_pipeline.local.dev import HOME_DIRECTORY
from recon_pipeline.stores import reports
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import REPO, child_env

ASSET = AssetKey("reconciliation_report")
EVALUATED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


def make_demo(root: Path, env: dict[str, str]) -> None:
    """The `make demo` recipe, from a project root holding the project's yaml files."""
    done = subprocess.run([sys.executable, "-m", "recon_pipeline.local.dev", "demo", "--yes",
                           "--clients", "10"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"DAGSTER_HOME={root / HOME_DIRECTORY}" in done.stdout


def test_demo_records_in_the_instance_that_make_dev_serves(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], dagster_postgres_url: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("workspace.yaml", "dagster.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    # The servers are the test's (so `--yes`); the instance storage is PostgreSQL.
    env = child_env(DATABASE_URL=pg_url, MONGODB_URL=mongo_url_of(mongo_db),
                    MONGODB_DATABASE=mongo_db.name, DAGSTER_POSTGRES_URL=dagster_postgres_url)
    make_demo(tmp_path, env)
    make_demo(tmp_path, env)

    home = tmp_path / HOME_DIRECTORY
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    run_ids = {r["run_id"]: r["id"] for r in reports.recent_reports(pg_engine, 2)}
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_postgres_url)
    with DagsterInstance.get() as instance:  # what `make dev` opens
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        records = instance.fetch_materializations(ASSET, limit=100).records
        mine = {r.run_id: r.asset_materialization for r in records if r.run_id in run_ids}
        assert len(mine) == 2  # a second demo, a second point on every plot
        for run_id, materialization in mine.items():
            assert materialization is not None
            assert materialization.metadata["report_id"].value == str(run_ids[run_id])
            assert "clients/mismatches_found" in materialization.metadata
        for name in CHECK_NAMES:
            history = instance.event_log_storage.get_asset_check_execution_history(
                AssetCheckKey(ASSET, name), limit=100, status=EVALUATED)
            assert sorted(r.run_id for r in history if r.run_id in run_ids) == sorted(run_ids)
