"""MongoDB access: clients with masked errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from recon_pipeline.model.masking import mask_text, mask_url, url_secrets

Document = dict[str, Any]
SERVER_SELECTION_TIMEOUT_MS = 5000
# Also how long the driver's monitor waits for a heartbeat (plus `heartbeatFrequencyMS`,
# 10 s, while it streams them), and a heartbeat that times out makes pymongo cancel every
# operation in flight on that server ("operation cancelled"). A server busy building a
# large sorted result answers late: with 5 s here, two 1M-row bench full scans on
# secantusdb ended with exactly that error. A server that is not there is still found
# out after SERVER_SELECTION_TIMEOUT_MS.
CONNECT_TIMEOUT_MS = 30_000
# The embedded server (secantusdb) names its own version in `buildInfo` under this key (it
# reports itself as MongoDB 8.2 otherwise): it answers a query bounded on `_id` by scanning
# the whole collection (EMBEDDED_MONGODB.md).
SECANTUS_BUILD_KEY = "secantusVersion"


class MongoUnavailable(RuntimeError):
    """MongoDB could not be reached; the message is already masked."""


def create_client(url: str, **options: Any) -> MongoClient[Document]:
    options.setdefault("serverSelectionTimeoutMS", SERVER_SELECTION_TIMEOUT_MS)
    options.setdefault("connectTimeoutMS", CONNECT_TIMEOUT_MS)
    return MongoClient(url, tz_aware=True, uuidRepresentation="standard", **options)


def mongo_error_text(error: BaseException) -> str:
    """A driver error in one line: a server selection timeout's text goes on with the whole
    topology description, which says nothing more to an operator. Not masked yet."""
    return str(error).split(", Timeout:")[0].split("\n")[0]


def mongo_unavailable(url: str, error: BaseException) -> MongoUnavailable:
    return MongoUnavailable(mask_text(
        f"cannot connect to MongoDB at {mask_url(url)}: {mongo_error_text(error)}",
        url_secrets(url)))


def connect_database(url: str, database: str, **options: Any) -> Database[Document]:
    """A database handle whose server answered `ping`; MongoUnavailable otherwise."""
    client = create_client(url, **options)
    try:
        client.admin.command("ping")
    except PyMongoError as error:
        client.close()
        raise mongo_unavailable(url, error) from None
    return client[database]


def write_concern_failure(details: Mapping[str, Any]) -> str | None:
    """A bulk write's write concern error, as text, if it has one: its writes were
    applied, perhaps, but not as durably as asked, so none of them counts as done."""
    concern = details.get("writeConcernErrors") or []
    if not concern:
        return None
    return f"MongoDB write concern error: {concern[0].get('errmsg', concern[0])}"


def reachable(db: Database[Document]) -> bool:
    """Whether the server answers a ping (within the client's server selection timeout)."""
    try:
        db.client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def serves_key_ranges(db: Database[Document]) -> bool:
    """Whether the server answers a query bounded on the key (`$gt`/`$lte`) from an index,
    so that N key-range chunks cost about one scan: a mongod does; the embedded
    secantusdb scans the whole collection for each range. One `buildInfo` round trip; a
    server that does not answer is taken as not serving them (one chunk is always
    correct)."""
    try:
        build = db.client.admin.command("buildInfo")
    except PyMongoError:
        return False
    return SECANTUS_BUILD_KEY not in build
