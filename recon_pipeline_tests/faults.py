"""MongoDB faults for tests: `failCommand` aimed at one client, named by its appName, so
the test's own reads and writes are never hit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo.database import Database

from recon_pipeline.stores.mongo import create_client

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
