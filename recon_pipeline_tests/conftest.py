"""Real servers for every test: session-scoped PostgreSQL and MongoDB, and a fresh
database per test (a PostgreSQL database cloned from a schema template, a MongoDB
database dropped afterwards), which costs tens of milliseconds.

`DATABASE_URL` / `MONGODB_URL`, when set, point the suite at external servers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from pymongo.database import Database

from recon_pipeline.local import embedded
from recon_pipeline.local.environment import normalize_postgres_url, packaged_mapping_path
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import create_engine, load_mapping
from recon_pipeline.stores.schema import init_schema

POSTGRES_FIXTURES = {"pg_url", "pg_engine", "fresh_database", "schema_template",
                     "dagster_postgres_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses PostgreSQL, so CI can re-run them against another server."""
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@dataclass(frozen=True)
class ServerUrls:
    postgres_admin_url: str  # any database on the server, used to create test databases
    mongodb_url: str
    embedded_home: Path | None
    mongodb_port: int | None  # set when the suite owns the server (it can be restarted)
    # The servers the suite started, by name; fault tests replace an entry when they
    # restart one, so the session stops the process that is running at the end.
    owned: dict[str, embedded.ServerProcess] = field(default_factory=dict)

    def postgres_url(self, database: str) -> str:
        return sa.make_url(self.postgres_admin_url).set(database=database).render_as_string(
            hide_password=False)


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUrls]:
    home = tmp_path_factory.mktemp("servers")
    started: list[embedded.ServerProcess] = []
    pg_url = os.environ.get("DATABASE_URL")
    if pg_url:
        pg_url = normalize_postgres_url(pg_url)
    else:
        pg = embedded.start_postgres(home / "postgres", fast=True)
        started.append(pg)
        pg_url = embedded.postgres_url(pg.port, "postgres")
    mongo_url = os.environ.get("MONGODB_URL")
    mongo_port = None
    if not mongo_url:
        mongo = embedded.start_mongodb(home / "mongodb", test_commands=True)
        started.append(mongo)
        mongo_url, mongo_port = embedded.mongodb_url(mongo.port), mongo.port
    urls = ServerUrls(pg_url, mongo_url, home, mongo_port,
                      {server.name: server for server in started})
    try:
        yield urls
    finally:
        for server in urls.owned.values():
            embedded.stop_server(server)


@pytest.fixture(scope="session")
def schema_template(servers: ServerUrls) -> Iterator[str]:
    """A database holding the initialised schema, cloned for each test."""
    name = f"recon_tpl_{os.getpid()}"
    _drop_database(servers, name)
    embedded.ensure_database(servers.postgres_admin_url, name)
    engine = create_engine(servers.postgres_url(name))
    init_schema(engine)
    engine.dispose()
    yield name
    _drop_database(servers, name)


def _drop_database(servers: ServerUrls, name: str) -> None:
    with psycopg.connect(_dsn(servers.postgres_admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(name)))


@pytest.fixture
def fresh_database(servers: ServerUrls) -> Iterator[str]:
    """An empty database (no schema) for tests of `db init` itself."""
    name = f"recon_t_{uuid.uuid4().hex[:10]}"
    embedded.ensure_database(servers.postgres_admin_url, name)
    yield servers.postgres_url(name)
    _drop_database(servers, name)


@pytest.fixture
def pg_url(servers: ServerUrls, schema_template: str) -> Iterator[str]:
    name = f"recon_t_{uuid.uuid4().hex[:10]}"
    embedded.ensure_database(servers.postgres_admin_url, name, template=schema_template)
    yield servers.postgres_url(name)
    _drop_database(servers, name)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def mongo_db(servers: ServerUrls) -> Iterator[Database[dict[str, Any]]]:
    client = create_client(servers.mongodb_url)
    name = f"recon_t_{uuid.uuid4().hex[:10]}"
    yield client[name]
    client.drop_database(name)
    client.close()


@pytest.fixture
def config(pg_engine: sa.Engine) -> ReconConfig:
    return load_mapping(packaged_mapping_path(), pg_engine)


def mongo_url_of(db: Database[Any]) -> str:
    """The URL of the server behind a database handle (tests use one server)."""
    if os.environ.get("MONGODB_URL"):
        return os.environ["MONGODB_URL"]
    host, port = db.client.address or ("127.0.0.1", 27017)
    return f"mongodb://{host}:{port}/?directConnection=true"


@pytest.fixture(scope="session")
def dagster_postgres_url(servers: ServerUrls) -> Iterator[str]:
    """A database for Dagster's own instance storage (dagster-postgres wants psycopg2)."""
    name = f"dagster_t_{os.getpid()}"
    _drop_database(servers, name)
    embedded.ensure_database(servers.postgres_admin_url, name)
    yield servers.postgres_url(name).replace("postgresql+psycopg://", "postgresql+psycopg2://")
    _drop_database(servers, name)
