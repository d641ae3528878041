"""Faults for tests: `failCommand` aimed at one client, named by its appName, so the
test's own reads and writes are never hit; holding a run inside one phase; stopping and
restarting the suite's own servers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.local import embedded
from recon_pipeline.stores.mongo import create_client
from recon_pipeline_tests.conftest import ServerUrls

# A write concern failure as mongod reports a replication timeout: the write is applied.
WRITE_CONCERN = {"code": 64, "errmsg": "waiting for replication timed out"}


@contextmanager
def fail_point(mongodb_url: str, app: str, mode: Any, **data: Any) -> Iterator[None]:
    """`failCommand` for the client named `app` only; switched off whatever happens."""
    admin = create_client(mongodb_url).admin
    admin.command("configureFailPoint", "failCommand", mode=mode,
                  data={"appName": app, **data})
    try:
        yield
    finally:
        admin.command("configureFailPoint", "failCommand", mode="off")
        admin.client.close()


@contextmanager
def database_as(mongodb_url: str, app: str, name: str) -> Iterator[Database[dict[str, Any]]]:
    """Database `name` through a client named `app`, which fail points can aim at."""
    client = create_client(mongodb_url, appName=app)
    try:
        yield client[name]
    finally:
        client.close()


# --- holding a run inside a phase ------------------------------------------------------
# A fail point with `blockConnection` freezes the job inside one MongoDB command; the test
# sees it arrive through the server's per-command counters (the job is the only client
# sending that command meanwhile). A table lock freezes it at a PostgreSQL statement.

BLOCK_MS = 600_000  # "until the test acts": the connection is closed long before
WAIT_SECONDS = 180.0  # generous: the machine is shared


def frozen(mongodb_url: str, app: str, command: str, skip: int) -> Any:
    """Freeze the `skip`+1-th `command` of client `app` until the test acts."""
    return fail_point(mongodb_url, app, {"skip": skip, "times": 1}, failCommands=[command],
                      blockConnection=True, blockTimeMS=BLOCK_MS)


def job_mongodb_url(mongodb_url: str, app: str) -> str:
    """The URL a run under test uses: named `app` for fail points, and without the
    driver's one silent retry, so a fault lands where the test put it."""
    separator = "&" if "?" in mongodb_url else "/?"
    return f"{mongodb_url}{separator}appName={app}&retryWrites=false&retryReads=false"


def command_count(mongodb_url: str, bucket: str) -> int:
    """Commands of one kind the server has received (`update`, `query` for find, ...)."""
    client = create_client(mongodb_url)
    try:
        return int(client.admin.command("serverStatus")["opcounters"][bucket])
    finally:
        client.close()


def wait_for_command(mongodb_url: str, bucket: str, count: int, what: str) -> None:
    """Poll until the server has received `count` commands of `bucket`."""
    embedded.wait_until(lambda: command_count(mongodb_url, bucket) >= count, what,
                        WAIT_SECONDS)


@contextmanager
def table_locked(engine: sa.Engine, *tables: str) -> Iterator[sa.Connection]:
    """`tables` locked ACCESS EXCLUSIVE until the block ends: any statement of a run on
    them waits there."""
    with engine.connect() as conn:
        conn.execute(sa.text("set local lock_timeout = '60s'"))
        for table in tables:
            conn.execute(sa.text(f'lock table "{table}" in access exclusive mode'))
        try:
            yield conn
        finally:
            try:
                conn.rollback()
            except sa.exc.DBAPIError as error:  # the server was restarted under it
                if not error.connection_invalidated:
                    raise


def waiting_on_lock(engine: sa.Engine, statement_like: str) -> list[int]:
    """Backends of this database waiting on a lock while running a statement like
    `statement_like` (an ILIKE pattern)."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "select pid from pg_stat_activity where datname = current_database() "
            "and wait_event_type = 'Lock' and query ilike :pattern"),
            {"pattern": statement_like}).scalars())


def wait_for_lock_wait(engine: sa.Engine, statement_like: str, what: str) -> list[int]:
    pids: list[int] = []

    def arrived() -> bool:
        pids[:] = waiting_on_lock(engine, statement_like)
        return bool(pids)

    embedded.wait_until(arrived, what, WAIT_SECONDS)
    return pids


def wait_for_outbox_idle(engine: sa.Engine) -> None:
    """Until no transaction holds outbox rows: a claimed batch keeps its transaction
    open until its outcomes are recorded (or rolled back)."""
    def idle() -> bool:
        with engine.connect() as conn:
            return not conn.execute(sa.text(
                "select count(*) from pg_locks l join pg_database d on d.oid = l.database "
                "where d.datname = current_database() and l.pid <> pg_backend_pid() "
                "and l.relation = 'outbox_messages'::regclass")).scalar_one()

    embedded.wait_until(idle, "the outbox to record its batches", WAIT_SECONDS)


def wait_for_backends_gone(engine: sa.Engine, pids: list[int]) -> None:
    """A killed client's backends roll back and leave once they notice; wait for that."""
    def gone() -> bool:
        with engine.connect() as conn:
            return not conn.execute(sa.text(
                "select count(*) from pg_stat_activity where pid = any(:pids)"),
                {"pids": pids}).scalar_one()

    embedded.wait_until(gone, f"backends {pids} to end", WAIT_SECONDS)


# --- stopping and restarting the suite's own servers -------------------------------------


def stop_mongodb(servers: ServerUrls) -> None:
    """SIGTERM (durable: every acknowledged write is kept) the suite's secantusdb."""
    embedded.stop_server(servers.owned["mongodb"])


def start_mongodb(servers: ServerUrls) -> None:
    """The same data directory and port again, so later tests keep working."""
    old = servers.owned["mongodb"]
    servers.owned["mongodb"] = embedded.start_mongodb(
        Path(old.datadir), port=old.port, test_commands=True)


def ensure_mongodb_running(servers: ServerUrls) -> None:
    """After a test that stops the server, whatever happened in it: later tests need it."""
    server = servers.owned.get("mongodb")
    if server is not None and not embedded.mongodb_answers(server.port):
        start_mongodb(servers)


def restart_postgres(servers: ServerUrls) -> None:
    """Stop (fast: sessions are terminated) and start the suite's PostgreSQL again."""
    old = servers.owned["postgres"]
    embedded.stop_postgres(old)
    servers.owned["postgres"] = embedded.start_postgres(Path(old.datadir), port=old.port,
                                                        fast=True)


def require_owned(servers: ServerUrls, name: str) -> None:
    """Restart tests need a server the suite started (not one behind a URL)."""
    if name not in servers.owned:
        pytest.skip(f"{name} is an external server: the suite cannot restart it")
