"""A step's resources: one PostgreSQL engine, one MongoDB client and one loaded mapping,
however many calls the step's ops make; closed when the step ends."""

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.defs import resources
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline_tests.dagster_support import WINDOW_END, WINDOW_START, run_job, seed


def test_an_in_process_run_creates_each_client_and_the_mapping_once(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    made: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    ours: list[Any] = []  # what the resources made (Dagster's own storage has engines too)

    def counting(name: str, make: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            made[name] += 1
            ours.append(made_now := make(*args, **kwargs))
            return made_now
        return call

    def closing(name: str, close: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if any(self is mine for mine in ours):
                closed[name] += 1
            return close(self, *args, **kwargs)
        return call

    monkeypatch.setattr(resources, "connect_engine", counting("engine", resources.connect_engine))
    monkeypatch.setattr(resources, "create_client", counting("client", resources.create_client))
    monkeypatch.setattr(resources, "load_mapping", counting("mapping", resources.load_mapping))
    monkeypatch.setattr(sa.Engine, "dispose", closing("engine", sa.Engine.dispose))
    monkeypatch.setattr(resources.MongoClient, "close",
                        closing("client", resources.MongoClient.close))

    result = run_job(pg_url, mongo_db, window_start=WINDOW_START, window_end=WINDOW_END)

    assert result.success
    # In process, resources are set up once for the run: the `postgres` resource and the
    # copy the run lock holds share one engine; eight ops share the rest.
    assert made == Counter({"engine": 1, "client": 1, "mapping": 1})
    assert closed == Counter({"engine": 1, "client": 1})
    with pg_engine.connect() as conn:
        row = conn.execute(sa.text("select status, records_checked, repaired from "
                                   "reconciliation_reports")).one()
    assert tuple(row) == ("needs_attention", seeded.counts["records_checked"],
                          seeded.counts["repaired"])
    with pg_engine.connect() as conn:
        source_clients = conn.execute(sa.text("select count(*) from clients")).scalar_one()
    orphans = len(seeded.summary.drift["clients"].orphans)  # only reported, never deleted
    assert mongo_db.clients.count_documents({}) == source_clients + orphans
