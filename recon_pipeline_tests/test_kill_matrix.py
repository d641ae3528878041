"""SIGKILL of `recon-pipeline run` at five points (issue 10's fault matrix): outbox, diff,
repair, cleanup, report. The killed run's report stays `failed`; a rerun converges to the
very state an uninterrupted run leaves on identical seed data: every MongoDB document,
every source row, outbox message and idempotency key compared.

The run is a real `recon-pipeline run` process against the test servers. It is held at
the point by a `blockConnection` fail point aimed at its MongoDB client (the server's
command counters tell when it is there) or by a lock on the table its next statement
needs, then killed. Only the client dies: the servers keep every acknowledged write.
"""

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.local import embedded
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import create_engine
from recon_pipeline.stores.schema import REPORT_COUNTS
from recon_pipeline_tests import faults
from recon_pipeline_tests.conftest import ServerUrls, mongo_url_of
from recon_pipeline_tests.dagster_support import (
    run_job,
    seed,
    start_cli_run,
    step_errors,
)
from recon_pipeline_tests.read_model import (
    assert_converged,
    dump_mongodb,
    dump_postgres,
    leaked_secrets,
    with_secret,
)

APP = "recon-kill-matrix"
Image = tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def uninterrupted(servers: ServerUrls, schema_template: str) -> Image:
    """Both databases after one uninterrupted run over the same seed, in databases of
    their own."""
    from recon_pipeline.stores.postgres import load_mapping

    name = f"recon_ref_{os.getpid()}"
    embedded.ensure_database(servers.postgres_admin_url, name, template=schema_template)
    url = servers.postgres_url(name)
    engine = create_engine(url)
    client = create_client(servers.mongodb_url)
    try:
        db = client[name]
        seed(engine, db, load_mapping(packaged_mapping_path(), engine))
        result = run_job(url, db)
        assert result.success, step_errors(result)
        return dump_postgres(engine), dump_mongodb(db)
    finally:
        client.drop_database(name)
        client.close()
        engine.dispose()
        with embedded_admin(servers) as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))


@contextmanager
def embedded_admin(servers: ServerUrls) -> Iterator[sa.Connection]:
    engine = sa.create_engine(servers.postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def backends(engine: sa.Engine) -> list[int]:
    """Sessions of other clients on this database (the run's, during the test)."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "select pid from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid() and backend_type = 'client backend'")).scalars())


Hold = Callable[[ExitStack, ServerUrls, sa.Engine], None]


def at_mongodb_command(command: str, bucket: str, skip: int) -> Hold:
    """Freeze the run's `skip`+1-th MongoDB `command` and wait until it is sent."""
    def hold(stack: ExitStack, servers: ServerUrls, engine: sa.Engine) -> None:
        count = faults.command_count(servers.mongodb_url, bucket)
        stack.enter_context(faults.frozen(servers.mongodb_url, APP, command, skip))
        faults.wait_for_command(servers.mongodb_url, bucket, count + skip + 1, command)

    return hold


def at_cleanup(stack: ExitStack, servers: ServerUrls, engine: sa.Engine) -> None:
    stack.enter_context(faults.table_locked(engine, "idempotency_keys"))
    faults.wait_for_lock_wait(engine, "%idempotency_keys%", "cleanup")


def at_report(stack: ExitStack, servers: ServerUrls, engine: sa.Engine) -> None:
    """Cleanup held first, so the report row can be locked before the run reaches it."""
    with faults.table_locked(engine, "idempotency_keys"):
        faults.wait_for_lock_wait(engine, "%idempotency_keys%", "cleanup")
        conn = stack.enter_context(engine.connect())
        conn.execute(sa.text("select id from reconciliation_reports for update"))
        stack.callback(conn.rollback)
    faults.wait_for_lock_wait(engine, "%update reconciliation_reports%", "the report")


KILL_POINTS: dict[str, Hold] = {
    "outbox": at_mongodb_command("update", "update", skip=0),  # the outbox's write
    "diff": at_mongodb_command("find", "query", skip=1),  # extraction's second read
    "repair": at_mongodb_command("update", "update", skip=2),  # the 2nd repair write
    "cleanup": at_cleanup,
    "report": at_report,
}


# Each case starts a `recon-pipeline` process (seconds of Dagster start-up on a shared
# machine): `make test` kills in repair, the soak run at all five points.
FAST_POINTS = {"repair"}


@pytest.mark.parametrize("point", [
    point if point in FAST_POINTS else pytest.param(point, marks=pytest.mark.soak)
    for point in KILL_POINTS])
def test_sigkill_leaves_the_report_failed_and_a_rerun_converges_to_the_uninterrupted_state(
    point: str, servers: ServerUrls, pg_url: str, pg_engine: sa.Engine,
    mongo_db: Database[Any], uninterrupted: Image,
) -> None:
    from recon_pipeline.stores.postgres import load_mapping

    seeded = seed(pg_engine, mongo_db, load_mapping(packaged_mapping_path(), pg_engine))
    url = faults.job_mongodb_url(mongo_url_of(mongo_db), APP)
    process = start_cli_run(with_secret(pg_url), url, mongo_db.name)
    try:
        with ExitStack() as stack:
            KILL_POINTS[point](stack, servers, pg_engine)
            pids = backends(pg_engine)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        pg_engine.dispose()  # the test's own sessions: only the killed run's may remain
        faults.wait_for_backends_gone(pg_engine, pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    output = b"".join(process.communicate()).decode(errors="replace")
    with pg_engine.connect() as conn:
        killed = dict(conn.execute(sa.text(
            "select * from reconciliation_reports")).mappings().one())
        killed_mismatches = conn.execute(sa.text(
            "select count(*) from reconciliation_mismatches")).scalar_one()
    assert (killed["status"], killed["finished_at"]) == ("failed", None)

    rerun = run_job(with_secret(pg_url), mongo_db)
    assert rerun.success, step_errors(rerun)
    with pg_engine.connect() as conn:
        statuses = list(conn.execute(sa.text(
            "select status from reconciliation_reports order by id")).scalars())
    assert statuses == ["failed", "needs_attention"]  # the killed report stays failed
    assert_converged(pg_engine, mongo_db, seeded.summary)
    source, target = uninterrupted
    assert dump_postgres(pg_engine) == source
    assert dump_mongodb(mongo_db) == target
    leaks = leaked_secrets(pg_engine, mongo_db, output, *step_errors(rerun))
    print(f"\nMATRIX sigkill-at-{point}: runs=2 documents="
          f"{sum(len(v) for v in target.values())} rows="
          f"{sum(len(source[t]) for t in ('clients', 'creditor_debts', 'incoming_emails'))} "
          f"messages={len(source['outbox_messages'])} killed_mismatches={killed_mismatches} "
          f"killed_figures={sum(killed[c] for c in REPORT_COUNTS)} lost=0 wrong_repairs=0 "
          f"leaked_secrets={leaks}")
    assert leaks == 0
