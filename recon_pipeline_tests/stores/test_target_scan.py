"""The sorted scan of a target collection (`scan_target_documents`): what it asks the
server for, and the order it gives."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from pymongo.database import Database

from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.target import scan_target_documents
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.mongo_commands import Reads

ENTITY = "incoming_emails"  # its documents are keyed by `_id`


def scanned(db: Database[Any], entity: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The keys in the order the scan gave them, and the `find` commands it sent."""
    reads = Reads(db.name, entity.target.collection)
    client = create_client(mongo_url_of(db), event_listeners=[reads])
    try:
        batches = list(scan_target_documents(client[db.name], entity, batch_size=7))
    finally:
        client.close()
    return [document[entity.target.key] for batch in batches for document in batch], \
        [command for command in reads.commands if "find" in command]


def test_a_scan_on_id_walks_the_id_index_and_keeps_the_key_order(
        mongo_db: Database[Any], config: ReconConfig) -> None:
    """Without the index named, secantusdb reads and sorts the whole collection before its
    first batch; with it, the same order, strays of other BSON types in their place."""
    entity = config.entity(ENTITY)
    keys: list[Any] = [*range(1, 41), "stray", 2.5]
    random.Random(7).shuffle(keys)
    mongo_db[entity.target.collection].insert_many([{"_id": key} for key in keys])
    order, commands = scanned(mongo_db, entity)
    assert order == [1, 2, 2.5, *range(3, 41), "stray"]
    assert [command.get("hint") for command in commands] == ["_id_"]


def test_a_scan_on_another_key_leaves_the_plan_to_the_server(
        mongo_db: Database[Any], config: ReconConfig) -> None:
    email = config.entity(ENTITY)
    entity = dataclasses.replace(email, target=dataclasses.replace(email.target, key="ref"))
    mongo_db[entity.target.collection].insert_many(
        [{"_id": n, "ref": f"r{40 - n:02d}"} for n in range(40)])
    order, commands = scanned(mongo_db, entity)
    assert order == [f"r{n:02d}" for n in range(1, 41)]
    assert [command.get("hint") for command in commands] == [None]
