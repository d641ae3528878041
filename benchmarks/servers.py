"""Servers for a benchmark run: embedded ones in a temporary folder, or those that
DATABASE_URL / MONGODB_URL name; a fresh database on them for each benchmark. How a run
is launched on them and timed: benchmarks/paths.py."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.paths import RunTarget, run_in_process
from recon_pipeline.local import embedded
from recon_pipeline.local.environment import normalize_postgres_url
from recon_pipeline.stores.postgres import create_engine
from recon_pipeline.stores.schema import init_schema


@dataclass(frozen=True)
class BenchServers:
    postgres_admin_url: str
    mongodb_url: str

    def target(self, postgres_url: str, mongodb_database: str) -> RunTarget:
        """Where a run points: a database `fresh_database` gave."""
        return RunTarget(postgres_url, self.mongodb_url, mongodb_database)

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


def run_job(pg_url: str, mongo_url: str, db_name: str, **options: Any) -> dict[str, Any]:
    """One in-process run of `reconciliation_job` (benchmarks/paths.py `run_in_process`);
    the report row it wrote."""
    return run_in_process(RunTarget(pg_url, mongo_url, db_name), **options).report
