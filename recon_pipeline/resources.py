"""Dagster resources for the two servers: values from the environment, clients created
per execution and closed afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster import ConfigurableResource, EnvVar
from pymongo.database import Database

from recon_pipeline.environment import normalize_postgres_url, resolve_environment
from recon_pipeline.stores.mongo import connect_database
from recon_pipeline.stores.postgres import connect_engine


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


def _env(name: str) -> Any:
    """EnvVar when the variable is set (Dagster masks it in the UI); None otherwise."""
    return EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, Any]:
    return {
        "postgres": PostgresResource(database_url=_env("DATABASE_URL")),
        "mongo": MongoResource(mongodb_url=_env("MONGODB_URL"),
                               database=os.environ.get("MONGODB_DATABASE") or "recon"),
    }
