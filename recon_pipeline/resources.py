"""Dagster resources for the two servers: values from the environment, clients created
per execution and closed afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pymongo.database import Database

from recon_pipeline.engine.mapping import ReconConfig, load_mapping
from recon_pipeline.environment import (
    normalize_postgres_url,
    packaged_mapping_path,
    resolve_environment,
)
from recon_pipeline.stores.mongo import connect_database, create_client
from recon_pipeline.stores.postgres import connect_engine, waiting_advisory_lock

RUN_LOCK_NAME = "recon_pipeline.reconciliation_run"


class PostgresResource(ConfigurableResource):  # type: ignore[misc]
    """The source of truth. No URL: the embedded server (started when needed)."""

    database_url: str | None = None

    def url(self) -> str:
        return normalize_postgres_url(self.database_url or resolve_environment().database_url)

    @contextmanager
    def engine(self) -> Iterator[sa.Engine]:
        engine = connect_engine(self.url())
        try:
            yield engine
        finally:
            engine.dispose()


class MongoResource(ConfigurableResource):  # type: ignore[misc]
    """The read model. No URL: the embedded server (started when needed)."""

    mongodb_url: str | None = None
    database: str = "recon"

    def url(self) -> str:
        return self.mongodb_url or resolve_environment().mongodb_url

    @contextmanager
    def database_handle(self) -> Iterator[Database[dict[str, Any]]]:
        db = connect_database(self.url(), self.database)
        try:
            yield db
        finally:
            db.client.close()

    @contextmanager
    def unchecked_database(self) -> Iterator[Database[dict[str, Any]]]:
        """A handle that has not pinged the server: the run carries on (outbox, cleanup,
        a `partial` report) when MongoDB is down, so reaching it is the caller's test."""
        client = create_client(self.url())
        try:
            yield client[self.database]
        finally:
            client.close()


class MappingResource(ConfigurableResource):  # type: ignore[misc]
    """The mapping file (SPEC 5). No path: the packaged demo mapping."""

    path: str | None = None

    def load(self, engine: sa.Engine) -> ReconConfig:
        return load_mapping(Path(self.path) if self.path else packaged_mapping_path(), engine)


class RunLock(ConfigurableResource):  # type: ignore[misc]
    """Holds a PostgreSQL advisory lock while a run executes in one process.

    The daemon keeps runs apart with the `reconciliation` pool; `execute_in_process` (the
    CLI, tests, scripts) ignores pools. Only the first op requires this resource, so an
    in-process run initialises it once at start and tears it down after its last op: the
    lock spans the whole run, and a second run waits for it. Under the multiprocess
    executor it spans only the first step (the pool covers those runs)."""

    postgres: PostgresResource
    wait_seconds: float = 6 * 3600

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[RunLock]:
        with self.postgres.engine() as engine, waiting_advisory_lock(
                engine, RUN_LOCK_NAME, self.wait_seconds):
            yield self


def _env(name: str) -> Any:
    """EnvVar when the variable is set (Dagster masks it in the UI); None otherwise."""
    return EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, Any]:
    return reconciliation_resources(
        postgres=PostgresResource(database_url=_env("DATABASE_URL")),
        mongo=MongoResource(mongodb_url=_env("MONGODB_URL"),
                            database=os.environ.get("MONGODB_DATABASE") or "recon"),
        mapping=MappingResource(path=_env("RECON_CONFIG")))


def reconciliation_resources(postgres: PostgresResource, mongo: MongoResource,
                             mapping: MappingResource) -> dict[str, Any]:
    return {"postgres": postgres, "mongo": mongo, "mapping": mapping,
            "run_lock": RunLock(postgres=postgres)}
