"""Dagster resources for the two servers, the mapping and the run lock: values from the
environment; each step gets its own copy, whose clients are created on first use and
closed when the step ends, and whose mapping is read once. The copies a step holds share
one PostgreSQL engine (the run lock's and the ops')."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field, PrivateAttr
from pymongo import MongoClient
from pymongo.database import Database

from recon_pipeline.local.environment import (
    mapping_path,
    mongodb_database,
    normalize_postgres_url,
    resolve_environment,
)
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import run_lock
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import connect_engine, load_mapping, name_lost_server


class _SharedEngines:
    """One engine per URL in a process, lent to every PostgresResource copy that asks and
    disposed when the last one gives it back: a step sets up the ops' copy and the run
    lock's, and one pool and one first connection serve both."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lent: dict[str, tuple[sa.Engine, int]] = {}

    def borrow(self, url: str) -> sa.Engine:
        with self._lock:
            engine, users = self._lent.get(url) or (None, 0)
            if engine is None:
                engine = name_lost_server(connect_engine(url), url)
            self._lent[url] = (engine, users + 1)
            return engine

    def give_back(self, url: str) -> None:
        with self._lock:
            engine, users = self._lent[url]
            if users > 1:
                self._lent[url] = (engine, users - 1)
                return
            del self._lent[url]
        engine.dispose()


_engines = _SharedEngines()


class PostgresResource(ConfigurableResource):  # type: ignore[misc]
    """The source of truth. No URL: the embedded server (started when needed)."""

    database_url: str | None = None
    _engine: sa.Engine | None = PrivateAttr(default=None)
    _engine_url: str | None = PrivateAttr(default=None)

    def url(self) -> str:
        return normalize_postgres_url(self.database_url or resolve_environment().database_url)

    @property
    def engine(self) -> sa.Engine:
        """This step's engine: connected on first use, given back when the step ends.
        PostgreSQL going away under the step (a restart, a crash) fails it with
        DatabaseUnavailable naming the server, not a driver error."""
        if self._engine is None:
            url = self.url()
            self._engine = _engines.borrow(url)
            self._engine_url = url
        return self._engine

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[PostgresResource]:
        try:
            yield self
        finally:
            if self._engine_url is not None:
                _engines.give_back(self._engine_url)
            self._engine = self._engine_url = None


class MongoResource(ConfigurableResource):  # type: ignore[misc]
    """The read model. No URL: the embedded server (started when needed). No database:
    MONGODB_DATABASE where the step runs, else `recon`."""

    mongodb_url: str | None = None
    database: str | None = None
    _client: MongoClient[dict[str, Any]] | None = PrivateAttr(default=None)

    def url(self) -> str:
        return self.mongodb_url or resolve_environment().mongodb_url

    @property
    def unchecked_database(self) -> Database[dict[str, Any]]:
        """This step's handle, created on first use and closed when the step ends. It has
        not pinged the server: the run carries on (outbox, cleanup, a `partial` report)
        when MongoDB is down, so reaching it is the caller's test."""
        if self._client is None:
            self._client = create_client(self.url())
        return self._client[self.database or mongodb_database()]

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[MongoResource]:
        try:
            yield self
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None


class MappingResource(ConfigurableResource):  # type: ignore[misc]
    """The mapping file (SPEC 5). No path: RECON_CONFIG where the step runs, else the
    packaged demo mapping. Read and checked against the schema once per step (Dagster
    hands every step a fresh copy)."""

    path: str | None = None
    _loaded: ReconConfig | None = PrivateAttr(default=None)

    def load(self, engine: sa.Engine) -> ReconConfig:
        if self._loaded is None:
            self._loaded = load_mapping(Path(self.path) if self.path else mapping_path(), engine)
        return self._loaded


class RunLock(ConfigurableResource):  # type: ignore[misc]
    """The run lock of SPEC 7 (stores/run_lock.py), held from a run's first op to its last.

    Every op needs this resource (the hooks in assets.py require it), so it is set up in
    every process that runs a step: once per run in process, once per step under the
    multiprocess and celery executors. Setting up takes the lock for the run, or re-enters
    it when the run holds it already, waiting up to `wait_seconds` for another run;
    while the step runs a thread keeps the lease fresh; when the step ends the lease stays
    for `lease_seconds`, enough for the next step's process to start. The last op releases
    it (`release`), a failure marks it (`mark_failed`) so it frees when the run's last
    running step ends. A dead holder's lease expires after `lease_seconds`, at once when it
    died on this host. The `reconciliation` pool still limits the daemon's launches."""

    postgres: PostgresResource
    wait_seconds: float = Field(
        default=6 * 3600, ge=0, description="longest wait for another run to finish")
    lease_seconds: float = Field(
        default=120.0, gt=0, description="how long the lock outlives a step: covers the "
        "start of the next step's process, and frees a dead holder's lock")
    poll_seconds: float = Field(default=1.0, gt=0, description="how often a waiting run "
                                "looks at the lock")

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator[RunLock]:
        if context.run is None or context.run.is_finished:
            # Built outside a run, or after it (`with execute_job(...) as result` sets the
            # resources up again to load outputs): no step runs, nothing to keep apart.
            yield self
            return
        claimant = run_lock.Claimant.this_process(context.run.run_id)
        log = context.log

        def waiting(holder: run_lock.Holder) -> None:
            # A warning: `recon-pipeline run` prints warnings, so its user sees the wait too.
            if log is not None:
                log.warning(f"run {claimant.run_id} waits for the run lock, held by "
                         f"{holder.describe()}")

        engine = self.postgres.engine
        run_lock.acquire(engine, claimant, lease_seconds=self.lease_seconds,
                         wait_seconds=self.wait_seconds, poll_seconds=self.poll_seconds,
                         on_wait=waiting)
        try:
            with run_lock.keep_alive(engine, claimant, self.lease_seconds):
                yield self
        finally:
            run_lock.step_done(engine, claimant, self.lease_seconds)

    def release(self, run_id: str) -> None:
        run_lock.release(self.postgres.engine, run_id)

    def mark_failed(self, run_id: str) -> None:
        run_lock.mark_failed(self.postgres.engine, run_id)


def _env(name: str) -> Any:
    """EnvVar when the variable is set (Dagster masks it in the UI); None otherwise."""
    return EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, Any]:
    """The code location's resources, each variable read in the step, from the environment
    the step sees (`EnvVar` when the variable is set as the code location loads, the
    resource's own lookup otherwise): a step the run worker runs itself (defs/in_run_worker.py),
    in a process whose environment changed after it loaded the code location (a test
    session, a notebook), reads what a step process would."""
    return reconciliation_resources(
        postgres=PostgresResource(database_url=_env("DATABASE_URL")),
        mongo=MongoResource(mongodb_url=_env("MONGODB_URL"),
                            database=_env("MONGODB_DATABASE")),
        mapping=MappingResource(path=_env("RECON_CONFIG")))


def reconciliation_resources(postgres: PostgresResource, mongo: MongoResource,
                             mapping: MappingResource) -> dict[str, Any]:
    return {"postgres": postgres, "mongo": mongo, "mapping": mapping,
            "run_lock": RunLock(postgres=postgres)}
