"""Writing to the read model: one unordered bulk write per call, its per-write errors and
its write concern error returned as values, so the caller decides each write's verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from recon_pipeline.model.mapping import EntityMapping
from recon_pipeline.stores.mongo import write_concern_failure

DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class WriteError:
    code: int | None
    message: str  # the server's errmsg, "" when it gave none


@dataclass(frozen=True, slots=True)
class BulkWriteOutcome:
    errors: dict[int, WriteError] = field(default_factory=dict)  # by index in the ops
    # Set when the server applied the writes, perhaps, but not as durably as asked.
    write_concern_error: str | None = None
    applied: int = 0  # documents matched or upserted


def bulk_write_ops(db: Database[dict[str, Any]], entity: EntityMapping,
                   ops: Sequence[UpdateOne | DeleteOne]) -> BulkWriteOutcome:
    """Run `ops` unordered on the entity's collection. Errors of single writes come back
    in the outcome; any other error (the command failed, the server is unreachable, the
    client refused a document) is raised."""
    if not ops:
        return BulkWriteOutcome()
    try:
        result = db[entity.target.collection].bulk_write(list(ops), ordered=False)
    except BulkWriteError as error:
        details = error.details
        return BulkWriteOutcome(
            {e["index"]: WriteError(e.get("code"), str(e.get("errmsg", "")))
             for e in details.get("writeErrors", [])},
            write_concern_failure(details),
            int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0)))
    return BulkWriteOutcome(applied=result.matched_count + result.upserted_count)


def write_best_effort(db: Database[dict[str, Any]], entity: EntityMapping,
                      ops: Sequence[UpdateOne | DeleteOne]) -> None:
    """`bulk_write_ops` with its failures dropped: for writes that a later run makes anyway
    when they fail (a refused guard is a duplicate key or no match; any other error leaves
    the target a version behind, which the next run finds and repairs)."""
    try:
        bulk_write_ops(db, entity, ops)
    except PyMongoError:
        return
