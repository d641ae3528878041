"""Servers for a benchmark run (embedded ones in a temporary folder, or the URLs given), and
a whole run through `reconciliation_job`: the path every user run takes, default settings."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from recon_pipeline.local import embedded
from recon_pipeline.local.environment import normalize_postgres_url
from recon_pipeline.stores.postgres import create_engine
from recon_pipeline.stores.schema import init_schema


@dataclass(frozen=True)
class BenchServers:
    postgres_admin_url: str
    mongodb_url: str

    @contextmanager
    def fresh_database(self) -> Iterator[tuple[sa.Engine, str, str]]:
        """(engine with the schema initialised, its URL, a MongoDB database name)."""
        name = f"recon_bench_{uuid.uuid4().hex[:8]}"
        embedded.ensure_database(self.postgres_admin_url, name)
        url = sa.make_url(self.postgres_admin_url).set(database=name).render_as_string(
            hide_password=False)
        engine = create_engine(url)
        init_schema(engine)
        try:
            yield engine, url, name
        finally:
            engine.dispose()
            import psycopg

            with psycopg.connect(self.postgres_admin_url.replace("+psycopg", ""),
                                 autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
            from pymongo import MongoClient

            MongoClient(self.mongodb_url).drop_database(name)


@contextmanager
def bench_servers() -> Iterator[BenchServers]:
    pg_url = os.environ.get("DATABASE_URL")
    mongo_url = os.environ.get("MONGODB_URL")
    with tempfile.TemporaryDirectory(prefix="recon-bench-") as tmp:
        started: list[embedded.ServerProcess] = []
        try:
            if not pg_url:
                pg = embedded.start_postgres(Path(tmp) / "postgres", fast=True)
                started.append(pg)
                pg_url = embedded.postgres_url(pg.port, "postgres")
            if not mongo_url:
                mongo = embedded.start_mongodb(Path(tmp) / "mongodb")
                started.append(mongo)
                mongo_url = embedded.mongodb_url(mongo.port)
            yield BenchServers(normalize_postgres_url(pg_url), mongo_url)
        finally:
            for server in started:
                embedded.stop_server(server)


def run_job(pg_url: str, mongo_url: str, db_name: str, instance: Any = None,
            **options: Any) -> dict[str, Any]:
    """One in-process run of `reconciliation_job` with the packaged mapping (default
    settings) and `recon_pipeline.run_config(**options)`; the report row it wrote.
    `instance`: a DagsterInstance to run on (to read the run's step stats afterwards),
    an ephemeral one by default."""
    from dagster import DagsterInstance

    import recon_pipeline
    from recon_pipeline.cli.runner import QUIET_LOGGERS, reconciliation_job_def
    from recon_pipeline.defs.partitions import partition_covering
    from recon_pipeline.defs.resources import (
        MappingResource,
        MongoResource,
        PostgresResource,
        reconciliation_resources,
    )
    from recon_pipeline.stores import reports

    now = datetime.now(UTC)
    end = options.get("window_end")
    resources = reconciliation_resources(
        PostgresResource(database_url=pg_url),
        MongoResource(mongodb_url=mongo_url, database=db_name), MappingResource())
    with nullcontext(instance) if instance else DagsterInstance.ephemeral() as instance:
        result = reconciliation_job_def().execute_in_process(
            run_config={**recon_pipeline.run_config(**options), **QUIET_LOGGERS},
            instance=instance, resources=resources,
            partition_key=partition_covering(end if isinstance(end, datetime) else now, now))
    assert result.success
    [event] = result.get_asset_materialization_events()
    report_id = int(event.materialization.metadata["report_id"].value)  # type: ignore[arg-type]
    engine = create_engine(pg_url)
    try:
        return reports.read_report(engine, report_id)
    finally:
        engine.dispose()
