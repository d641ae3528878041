"""Dual writes during runs (issue 10's fault matrix): an application keeps writing
`incoming_emails` the way a dual-write system does, PostgreSQL first and then MongoDB,
stamping `updated_at` and replacing the document whole (without `_recon_version`, which
only this project writes), while `reconciliation_job` judges and repairs the same rows.

Afterwards no document holds an older version than its row, and no repair overwrote a
newer write: with the writer stopped, MongoDB equals the projection of every source row.
The short case runs in `make test`; the soak case (`-m soak`) keeps writing across runs.
"""

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from bson.decimal128 import Decimal128
from pymongo.database import Database

from recon_pipeline.engine.mapping import ReconConfig
from recon_pipeline.stores.mongo import create_client
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import (
    WINDOW_START,
    mapping_with,
    run_job,
    seed,
    step_errors,
)
from recon_pipeline_tests.read_model import assert_converged, read_model_differences

MIN_WRITES_PER_SECOND = 200


@dataclass
class Writer:
    """An application thread: one row at a time, PostgreSQL then MongoDB."""

    pg_url: str
    mongodb_url: str
    database: str
    keys: list[int]
    seed: int
    stop: threading.Event = field(default_factory=threading.Event)
    writes: int = 0
    seconds: float = 0.0
    error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(self.seed)
        client = create_client(self.mongodb_url)
        collection = client[self.database]["incoming_emails"]
        started = time.monotonic()
        try:
            with psycopg.connect(self.pg_url.replace("postgresql+psycopg://", "postgresql://"),
                                 autocommit=True) as conn:
                while not self.stop.is_set():
                    key = rng.choice(self.keys)
                    subject = f"Reminder {self.writes} for {key}"
                    now = datetime.now(UTC)
                    row = conn.execute(
                        "update incoming_emails set subject = %s, updated_at = %s "
                        "where id = %s returning client_ref, from_address, received_at, "
                        "processing_status, extracted_amount", (subject, now, key)).fetchone()
                    assert row is not None
                    amount = row[4]
                    collection.replace_one({"_id": key}, {
                        "_id": key, "client_ref": row[0], "from": row[1], "subject": subject,
                        "received_at": row[2], "processing_status": row[3],
                        "extracted_amount": None if amount is None else Decimal128(
                            Decimal(amount)), "updated_at": now}, upsert=True)
                    self.writes += 1
        except BaseException as error:  # reported by the test, never swallowed
            self.error = error
        finally:
            self.seconds = time.monotonic() - started
            client.close()


def start_writers(pg_url: str, mongo_db: Database[Any], keys: list[int],
                  threads: int) -> tuple[list[Writer], list[threading.Thread]]:
    """Writers own disjoint keys, so each row's two writes stay in order."""
    writers = [Writer(pg_url, mongo_url_of(mongo_db), mongo_db.name, keys[i::threads], i)
               for i in range(threads)]
    workers = [threading.Thread(target=w.run, name=f"app-writer-{i}")
               for i, w in enumerate(writers)]
    for worker in workers:
        worker.start()
    return writers, workers


def stop_writers(writers: list[Writer], workers: list[threading.Thread]) -> tuple[int, float]:
    for writer in writers:
        writer.stop.set()
    for worker in workers:
        worker.join(timeout=60)
    for writer in writers:
        assert writer.error is None, repr(writer.error)
    writes = sum(w.writes for w in writers)
    return writes, writes / max(w.seconds for w in writers)


def dual_write_runs(pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
                    config: ReconConfig, tmp_path: Path, runs: int) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    drift = seeded.summary.drift["incoming_emails"]
    # Half the writes hit the drifted rows, which the runs judge and repair meanwhile.
    with pg_engine.connect() as conn:
        every = list(conn.execute(sa.text("select id from incoming_emails")).scalars())
    keys = sorted(set(drift.missing) | set(drift.mismatched)) * 3 + every
    # Rows change while they are judged: nothing is held back to settle.
    mapping = mapping_with(tmp_path, {"settle_seconds: 60": "settle_seconds: 0"})
    writers, workers = start_writers(pg_url, mongo_db, keys, threads=3)
    results = []
    try:
        for _ in range(runs):
            results.append(run_job(pg_url, mongo_db, mapping_path=mapping,
                                   window_end=datetime.now(UTC) + timedelta(hours=1)))
    finally:
        writes, rate = stop_writers(writers, workers)
    for result in results:
        assert result.success, step_errors(result)
    with pg_engine.connect() as conn:
        outcomes = dict(conn.execute(sa.text(
            "select repair_status, count(*) from reconciliation_mismatches "
            "group by repair_status")).all())
    found = read_model_differences(pg_engine, mongo_db)
    print(f"\nMATRIX dual-writes: runs={runs} app_writes={writes} "
          f"writes_per_second={rate:.0f} outcomes={outcomes} "
          f"older_documents={len(found.older)} wrong={len(found.wrong)}")
    assert rate >= MIN_WRITES_PER_SECOND
    assert found.older == []  # no document older than its row
    assert_converged(pg_engine, mongo_db, seeded.summary)  # no repair overwrote a write
    final = run_job(pg_url, mongo_db, mapping_path=mapping, window_start=WINDOW_START,
                    window_end=datetime.now(UTC) + timedelta(hours=1))
    assert final.success, step_errors(final)
    assert_converged(pg_engine, mongo_db, seeded.summary)


def test_application_writes_during_a_run_are_never_overwritten(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    tmp_path: Path,
) -> None:
    dual_write_runs(pg_url, pg_engine, mongo_db, config, tmp_path, runs=1)


@pytest.mark.soak
def test_application_writes_across_many_runs_are_never_overwritten(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    tmp_path: Path,
) -> None:
    dual_write_runs(pg_url, pg_engine, mongo_db, config, tmp_path, runs=15)
