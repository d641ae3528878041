"""The MongoDB client every store uses (`create_client`), against the suite's server."""

from recon_pipeline.stores.mongo import create_client
from recon_pipeline_tests import faults
from recon_pipeline_tests.conftest import ServerUrls

APP = "recon-slow-heartbeat"
LATE_MS = 7000  # later than the 5 s (+ the heartbeat interval) the client once allowed


def test_a_read_in_flight_outlives_a_server_slow_to_answer_its_heartbeat(
        servers: ServerUrls) -> None:
    """A server busy building a large sorted result answers heartbeats late; pymongo
    cancels every operation in flight when one times out ("operation cancelled"), which
    once cut a 1M-row full scan short. Here heartbeats and the cursor's next batch are both
    held for LATE_MS, with heartbeats every 0.5 s so that the test waits seconds, not
    tens of seconds: the whole cursor is still read."""
    client = create_client(servers.mongodb_url, appName=APP, heartbeatFrequencyMS=500)
    collection = client["recon_slow_heartbeat"]["documents"]
    try:
        collection.drop()
        collection.insert_many([{"_id": n} for n in range(7)])
        cursor = collection.find({}, sort=[("_id", 1)], batch_size=4)
        first = [next(cursor)["_id"] for _ in range(4)]  # the first batch
        # one getMore brings the other 3
        with faults.fail_point(servers.mongodb_url, APP, "alwaysOn",
                               failCommands=["hello", "isMaster", "getMore"],
                               blockConnection=True, blockTimeMS=LATE_MS):
            rest = [document["_id"] for document in cursor]
        assert first + rest == list(range(7))
    finally:
        collection.drop()
        client.close()
