"""Outbox retry (SPEC 6) on the real servers: every status transition, backoff, dead letters,
the version guard against out-of-order messages, MongoDB down, crashes and concurrency.
Each test asserts what PostgreSQL and MongoDB hold afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from bson.decimal128 import Decimal128
from pymongo.database import Database

from recon_pipeline.engine.outbox.deliver import OutboxResult, backoff_seconds, deliver_outbox
from recon_pipeline.engine.outbox.plan import InvalidPayload, plan_delivery
from recon_pipeline.local.demo_data import row_payload
from recon_pipeline.local.embedded import ensure_database, free_port, wait_until
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.outbox import OutboxMessage
from recon_pipeline.stores.postgres import create_engine
from recon_pipeline.stores.target import VERSION_FIELD
from recon_pipeline_tests import faults
from recon_pipeline_tests.builders import client_row
from recon_pipeline_tests.conftest import ServerUrls

Db = Database[dict[str, Any]]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
APP = "recon-outbox-under-test"  # fail points fire only for the delivering client


# --- helpers ------------------------------------------------------------------------------


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def tuned(config: ReconConfig, **outbox: Any) -> ReconConfig:
    settings = config.settings
    return replace(config, settings=replace(settings, outbox=replace(settings.outbox, **outbox)))


def email(i: int, updated_at: datetime = T0, **changes: Any) -> dict[str, Any]:
    row = {"id": i, "client_ref": f"C{i:03d}", "from_address": f"bank{i}@example.com",
           "subject": f"Statement {i}", "received_at": T0 - timedelta(days=1, microseconds=7),
           "processing_status": "new", "extracted_amount": Decimal("12.50"),
           "mongo_sync_status": "pending", "mongo_synced_at": None, "mongo_sync_error": None,
           "created_at": T0 - timedelta(days=1), "updated_at": updated_at}
    return {**row, **changes}


def email_doc(row: dict[str, Any]) -> dict[str, Any]:
    """The document SPEC 4.2 says an email row becomes (MongoDB keeps milliseconds)."""
    def ms(value: datetime) -> datetime:
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    amount = row["extracted_amount"]
    return {"_id": row["id"], "client_ref": row["client_ref"], "from": row["from_address"],
            "subject": row["subject"], "received_at": ms(row["received_at"]),
            "processing_status": row["processing_status"],
            "extracted_amount": None if amount is None else Decimal128(amount),
            "updated_at": ms(row["updated_at"]), VERSION_FIELD: ms(row["updated_at"])}


def debt(i: int, client_ref: str, updated_at: datetime = T0, **changes: Any) -> dict[str, Any]:
    row = {"id": i, "client_ref": client_ref, "creditor_name": f"Creditor {i}",
           "creditor_email": f"c{i}@example.com", "debt_amount": Decimal("100.00"),
           "currency": "EUR", "updated_at": updated_at}
    return {**row, **changes}


def debt_element(row: dict[str, Any]) -> dict[str, Any]:
    return {"creditor_id": row["id"], "creditor_name": row["creditor_name"],
            "creditor_email": row["creditor_email"],
            "current_debt_amount": Decimal128(row["debt_amount"]), "currency": row["currency"],
            "updated_at": row["updated_at"], VERSION_FIELD: row["updated_at"]}


def insert(engine: sa.Engine, table: sa.Table, *rows: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(table.insert(), list(rows))


def add_message(engine: sa.Engine, aggregate_type: str, aggregate_id: Any, operation: str,
                payload: Any, *, created_at: datetime = T0, status: str = "pending",
                attempts: int = 0, next_attempt_at: datetime = T0) -> int:
    with engine.begin() as conn:
        return int(conn.execute(
            sa.insert(schema.outbox_messages).returning(schema.outbox_messages.c.id),
            {"aggregate_type": aggregate_type, "aggregate_id": str(aggregate_id),
             "operation": operation, "payload": payload, "status": status,
             "attempts": attempts, "next_attempt_at": next_attempt_at,
             "created_at": created_at}).scalar_one())


def upsert_email(engine: sa.Engine, row: dict[str, Any], **options: Any) -> int:
    return add_message(engine, "incoming_emails", row["id"], "upsert", row_payload(row),
                       **options)


def upsert_debt(engine: sa.Engine, row: dict[str, Any], **options: Any) -> int:
    return add_message(engine, "creditor_debts", row["id"], "upsert", row_payload(row),
                       **options)


def message(engine: sa.Engine, message_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.outbox_messages)
                           .where(schema.outbox_messages.c.id == message_id)).mappings().one()
    return dict(row)


def statuses(engine: sa.Engine) -> dict[int, str]:
    m = schema.outbox_messages.c
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(m.id, m.status).order_by(m.id)).all())  # type: ignore[arg-type]


def sync_state(engine: sa.Engine, email_id: int) -> tuple[str, datetime | None, str | None]:
    t = schema.incoming_emails.c
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.mongo_sync_status, t.mongo_synced_at, t.mongo_sync_error)
                           .where(t.id == email_id)).one()
    return row[0], row[1], row[2]


def documents(db: Db, collection: str) -> list[dict[str, Any]]:
    return list(db[collection].find({}, sort=[("_id", 1)]))


def counts(result: OutboxResult) -> tuple[int, int, int, int, int]:
    return result.attempted, result.sent, result.failed, result.dead, result.stale


def fail_point(servers: ServerUrls, mode: Any, **data: Any) -> AbstractContextManager[None]:
    return faults.fail_point(servers.mongodb_url, APP, mode, **data)


@pytest.fixture
def app_db(servers: ServerUrls, mongo_db: Db) -> Iterator[Db]:
    """The test database, reached through a client that fail points aim at."""
    with faults.database_as(servers.mongodb_url, APP, mongo_db.name) as db:
        yield db


# --- status transitions ---------------------------------------------------------------------


def test_pending_upsert_is_sent_written_and_synced(pg_engine: sa.Engine, mongo_db: Db,
                                                   config: ReconConfig) -> None:
    row = email(1)
    insert(pg_engine, schema.incoming_emails, row)
    message_id = upsert_email(pg_engine, row)

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=1)))

    assert result == OutboxResult(attempted=1, sent=1, failed=0, dead=0, stale=0)
    assert documents(mongo_db, "incoming_emails") == [{
        "_id": 1, "client_ref": "C001", "from": "bank1@example.com", "subject": "Statement 1",
        "received_at": datetime(2026, 2, 28, 11, 59, 59, 999000, tzinfo=UTC),
        "processing_status": "new", "extracted_amount": Decimal128("12.50"),
        "updated_at": T0, VERSION_FIELD: T0}]
    stored = message(pg_engine, message_id)
    assert (stored["status"], stored["attempts"], stored["last_error"], stored["processed_at"]) \
        == ("sent", 0, None, T0 + timedelta(minutes=1))
    assert sync_state(pg_engine, 1) == ("synced", T0 + timedelta(minutes=1), None)


def test_failed_message_is_retried_and_sent(pg_engine: sa.Engine, mongo_db: Db,
                                            config: ReconConfig) -> None:
    row = email(1)
    insert(pg_engine, schema.incoming_emails, {**row, "mongo_sync_status": "failed",
                                               "mongo_sync_error": "timed out"})
    message_id = upsert_email(pg_engine, row, status="failed", attempts=2,
                              next_attempt_at=T0 + timedelta(minutes=2))

    early = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=1)))
    due = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=2)))

    assert counts(early) == (0, 0, 0, 0, 0)
    assert counts(due) == (1, 1, 0, 0, 0)
    stored = message(pg_engine, message_id)
    assert (stored["status"], stored["attempts"], stored["processed_at"]) == \
        ("sent", 2, T0 + timedelta(minutes=2))
    assert documents(mongo_db, "incoming_emails") == [email_doc(row)]
    assert sync_state(pg_engine, 1) == ("synced", T0 + timedelta(minutes=2), None)


def test_sent_dead_and_future_messages_are_not_claimed(pg_engine: sa.Engine, mongo_db: Db,
                                                       config: ReconConfig) -> None:
    ids = [upsert_email(pg_engine, email(1), status="sent"),
           upsert_email(pg_engine, email(2), status="dead", attempts=8),
           upsert_email(pg_engine, email(3), next_attempt_at=T0 + timedelta(hours=1))]
    before = [message(pg_engine, i) for i in ids]

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0))

    assert counts(result) == (0, 0, 0, 0, 0)
    assert [message(pg_engine, i) for i in ids] == before
    assert documents(mongo_db, "incoming_emails") == []


def test_batches_continue_until_nothing_is_due(pg_engine: sa.Engine, mongo_db: Db,
                                               config: ReconConfig) -> None:
    for i in range(1, 6):
        upsert_email(pg_engine, email(i))
    small = tuned(config, batch_size=2)

    first = deliver_outbox(pg_engine, mongo_db, small, now=at(T0), max_batches=1)
    rest = deliver_outbox(pg_engine, mongo_db, small, now=at(T0))

    assert counts(first) == (2, 2, 0, 0, 0)
    assert counts(rest) == (3, 3, 0, 0, 0)
    assert set(statuses(pg_engine).values()) == {"sent"}
    assert [d["_id"] for d in documents(mongo_db, "incoming_emails")] == [1, 2, 3, 4, 5]


def test_delete_message_removes_the_document(pg_engine: sa.Engine, mongo_db: Db,
                                             config: ReconConfig) -> None:
    mongo_db.incoming_emails.insert_many([email_doc(email(1)), email_doc(email(2))])
    deleted = add_message(pg_engine, "incoming_emails", 1, "delete", {},
                          created_at=T0 + timedelta(seconds=1))
    already_gone = add_message(pg_engine, "incoming_emails", 3, "delete", {"id": 3})

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=1)))

    assert counts(result) == (2, 2, 0, 0, 0)
    assert statuses(pg_engine) == {deleted: "sent", already_gone: "sent"}
    assert documents(mongo_db, "incoming_emails") == [email_doc(email(2))]


def test_embedded_upserts_create_push_and_update(pg_engine: sa.Engine, mongo_db: Db,
                                                 config: ReconConfig) -> None:
    old = debt(2, "C002", T0 - timedelta(hours=1), creditor_name="Old name")
    mongo_db.clients.insert_many([
        {"_id": "C001", "first_name": "Ada"},  # a parent without debts
        {"_id": "C002", "first_name": "Grace", "final_creditor_list": [debt_element(old)]}])
    pushed, updated, created = debt(1, "C001"), debt(2, "C002"), debt(3, "C003")
    for row in (pushed, updated, created):
        upsert_debt(pg_engine, row)

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0))

    assert counts(result) == (3, 3, 0, 0, 0)
    assert documents(mongo_db, "clients") == [
        {"_id": "C001", "first_name": "Ada", "final_creditor_list": [debt_element(pushed)]},
        {"_id": "C002", "first_name": "Grace", "final_creditor_list": [debt_element(updated)]},
        {"_id": "C003", "final_creditor_list": [debt_element(created)]}]


def test_embedded_delete_pulls_the_element(pg_engine: sa.Engine, mongo_db: Db,
                                           config: ReconConfig) -> None:
    kept, gone = debt(1, "C001"), debt(2, "C001")
    mongo_db.clients.insert_one({"_id": "C001", "final_creditor_list": [
        debt_element(kept), debt_element(gone)]})
    add_message(pg_engine, "creditor_debts", 2, "delete", {},
                created_at=T0 + timedelta(seconds=5))

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=1)))

    assert counts(result) == (1, 1, 0, 0, 0)
    assert documents(mongo_db, "clients") == [
        {"_id": "C001", "final_creditor_list": [debt_element(kept)]}]


# --- the version guard: the older message never wins ---------------------------------------

NEWER, OLDER = T0 + timedelta(minutes=5), T0


@pytest.mark.parametrize("separate_runs", [False, True], ids=["same-batch", "separate-runs"])
def test_older_email_message_never_overwrites_newer(pg_engine: sa.Engine, mongo_db: Db,
                                                    config: ReconConfig,
                                                    separate_runs: bool) -> None:
    newer, older = email(1, NEWER, subject="newer"), email(1, OLDER, subject="older")
    insert(pg_engine, schema.incoming_emails, newer)
    first = upsert_email(pg_engine, newer)  # delivered out of order: the newer one first
    results = []
    if separate_runs:
        results.append(deliver_outbox(pg_engine, mongo_db, config, now=at(NEWER)))
    second = upsert_email(pg_engine, older)
    results.append(deliver_outbox(pg_engine, mongo_db, config, now=at(NEWER)))

    assert sum(r.stale for r in results) == 1
    assert sum(r.sent for r in results) == 2
    assert statuses(pg_engine) == {first: "sent", second: "sent"}
    assert documents(mongo_db, "incoming_emails") == [email_doc(newer)]
    assert sync_state(pg_engine, 1) == ("synced", NEWER, None)


@pytest.mark.parametrize("separate_runs", [False, True], ids=["same-batch", "separate-runs"])
def test_older_debt_message_never_overwrites_newer_element(pg_engine: sa.Engine, mongo_db: Db,
                                                           config: ReconConfig,
                                                           separate_runs: bool) -> None:
    mongo_db.clients.insert_one({"_id": "C001", "first_name": "Ada"})
    newer = debt(7, "C001", NEWER, debt_amount=Decimal("250.00"))
    older = debt(7, "C001", OLDER, debt_amount=Decimal("100.00"))
    first = upsert_debt(pg_engine, newer)
    results = []
    if separate_runs:
        results.append(deliver_outbox(pg_engine, mongo_db, config, now=at(NEWER)))
    second = upsert_debt(pg_engine, older)
    results.append(deliver_outbox(pg_engine, mongo_db, config, now=at(NEWER)))

    assert sum(r.stale for r in results) == 1
    assert sum(r.sent for r in results) == 2
    assert statuses(pg_engine) == {first: "sent", second: "sent"}
    assert documents(mongo_db, "clients") == [
        {"_id": "C001", "first_name": "Ada", "final_creditor_list": [debt_element(newer)]}]


def test_older_messages_are_not_sent_when_the_newest_write_fails(
        servers: ServerUrls, pg_engine: sa.Engine, app_db: Db, mongo_db: Db,
        config: ReconConfig) -> None:
    rows = [email(1, T0 + timedelta(minutes=m), subject=f"v{m}") for m in (0, 1, 2)]
    insert(pg_engine, schema.incoming_emails, rows[-1])
    ids = [upsert_email(pg_engine, row) for row in rows]
    with fail_point(servers, {"times": 2}, failCommands=["update"], errorCode=2):
        failed = deliver_outbox(pg_engine, app_db, config, now=at(T0))

    error = "MongoDB write failed: Failing command via 'failCommand' failpoint (code 2)"
    assert counts(failed) == (3, 0, 3, 0, 0)
    stored = [message(pg_engine, i) for i in ids]
    assert [(m["status"], m["attempts"], m["last_error"], m["processed_at"]) for m in stored] \
        == [("failed", 1, f"superseded by message {ids[2]}, which was not delivered: {error}",
             None)] * 2 + [("failed", 1, error, None)]
    assert documents(mongo_db, "incoming_emails") == []
    assert sync_state(pg_engine, 1)[0] == "failed"

    retried = deliver_outbox(pg_engine, app_db, config, now=at(T0 + timedelta(seconds=60)))

    assert counts(retried) == (3, 3, 0, 0, 2)
    assert statuses(pg_engine) == dict.fromkeys(ids, "sent")
    assert documents(mongo_db, "incoming_emails") == [email_doc(rows[-1])]


def test_older_messages_are_left_due_when_mongodb_is_down(
        pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig) -> None:
    rows = [email(1, T0 + timedelta(minutes=m), subject=f"v{m}") for m in (0, 1)]
    insert(pg_engine, schema.incoming_emails, rows[-1])
    ids = [upsert_email(pg_engine, row) for row in rows]
    down = create_client(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
                         serverSelectionTimeoutMS=300, connectTimeoutMS=300)

    result = deliver_outbox(pg_engine, down[mongo_db.name], config, now=at(T0))

    assert (counts(result), result.mongo_unreachable) == ((1, 0, 1, 0, 0), True)
    older, newest = (message(pg_engine, i) for i in ids)
    assert (older["status"], older["attempts"], older["last_error"]) == ("pending", 0, None)
    assert (newest["status"], newest["attempts"]) == ("failed", 0)
    assert documents(mongo_db, "incoming_emails") == []


@pytest.mark.parametrize("entity", ["incoming_emails", "creditor_debts"])
def test_delete_older_than_the_target_is_stale(pg_engine: sa.Engine, mongo_db: Db,
                                               config: ReconConfig, entity: str) -> None:
    if entity == "incoming_emails":
        mongo_db.incoming_emails.insert_one(email_doc(email(1, NEWER)))
    else:
        mongo_db.clients.insert_one(
            {"_id": "C001", "final_creditor_list": [debt_element(debt(1, "C001", NEWER))]})
    collection = "incoming_emails" if entity == "incoming_emails" else "clients"
    before = documents(mongo_db, collection)
    message_id = add_message(pg_engine, entity, 1, "delete", {}, created_at=NEWER
                             - timedelta(seconds=1))

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(NEWER))

    assert counts(result) == (1, 1, 0, 0, 1)
    assert statuses(pg_engine) == {message_id: "sent"}
    assert documents(mongo_db, collection) == before


# --- malformed messages: dead at once, with the reason ---------------------------------------

GOOD = row_payload(email(1))
MALFORMED = [  # (aggregate_type, aggregate_id, operation, payload, last_error)
    ("invoices", "1", "upsert", GOOD,
     "invalid payload: unknown aggregate_type 'invoices' "
     "(mapped: clients, creditor_debts, incoming_emails)"),
    ("incoming_emails", "1", "merge", GOOD,
     "invalid payload: operation 'merge' is not upsert or delete"),
    ("incoming_emails", "1", "upsert", ["not", "an", "object"],
     "invalid payload: payload is an array, not an object"),
    ("incoming_emails", "1", "upsert", "just text",
     "invalid payload: payload is a string, not an object"),
    ("incoming_emails", "1", "upsert", {k: v for k, v in GOOD.items() if k != "id"},
     "invalid payload: key column 'id' missing"),
    ("incoming_emails", "1", "upsert", {k: v for k, v in GOOD.items() if k != "subject"},
     "invalid payload: column 'subject' missing"),
    ("incoming_emails", "1", "upsert", {**GOOD, "extracted_amount": "twelve"},
     "invalid payload: column 'extracted_amount': cannot coerce 'twelve' to decimal"),
    ("incoming_emails", "1", "upsert", {**GOOD, "updated_at": "yesterday"},
     "invalid payload: column 'updated_at': cannot coerce 'yesterday' to datetime"),
    ("incoming_emails", "1", "upsert", {**GOOD, "$set": {"subject": "x"}},
     "invalid payload: field name '$set' starts with '$'"),
    ("incoming_emails", "1", "upsert", {**GOOD, "meta": {"$where": "1"}},
     "invalid payload: field name '$where' starts with '$'"),
    ("incoming_emails", "1", "upsert", {**GOOD, "subject": "x" * (17 * 1024 * 1024)},
     "invalid payload: document of 17825962 bytes exceeds MongoDB's 16777216-byte limit"),
    ("incoming_emails", "2", "upsert", GOOD,
     "invalid payload: key column 'id' is 1 but aggregate_id is '2'"),
    ("incoming_emails", "1", "upsert", {**GOOD, "id": None},
     "invalid payload: key column 'id' is null"),
    ("incoming_emails", "one", "delete", {},
     "invalid payload: aggregate_id 'one' is not a valid integer key"),
    ("incoming_emails", "1", "upsert", {**GOOD, "extracted_amount": "1" * 40},
     "invalid payload: cannot store Decimal('" + "1" * 40 + "') exactly as Decimal128 "
     "(34 digits max)"),
    ("incoming_emails", str(2**64), "delete", {},
     f"invalid payload: integer {2**64} does not fit in 64 bits"),
    ("creditor_debts", "1", "upsert", row_payload({**debt(1, "C001"), "client_ref": None}),
     "invalid payload: parent key column 'client_ref' is null"),
]


@pytest.mark.parametrize("aggregate_type, aggregate_id, operation, payload, reason", MALFORMED,
                         ids=[reason[17:60] for *_, reason in MALFORMED])
def test_malformed_message_goes_dead_with_its_reason(
        pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig, aggregate_type: str,
        aggregate_id: str, operation: str, payload: Any, reason: str) -> None:
    message_id = add_message(pg_engine, aggregate_type, aggregate_id, operation, payload)

    result = deliver_outbox(pg_engine, mongo_db, config, now=at(T0))

    assert counts(result) == (1, 0, 0, 1, 0)
    stored = message(pg_engine, message_id)
    assert (stored["status"], stored["attempts"], stored["last_error"], stored["processed_at"],
            stored["next_attempt_at"]) == ("dead", 1, reason, None, T0)
    assert mongo_db.list_collection_names() == []


def test_malformed_messages_never_stop_the_batch(pg_engine: sa.Engine, mongo_db: Db,
                                                 config: ReconConfig) -> None:
    bad = [add_message(pg_engine, t, i, o, p) for t, i, o, p, _ in MALFORMED[:10]]
    good = upsert_email(pg_engine, email(5))

    result = deliver_outbox(pg_engine, mongo_db, tuned(config, batch_size=500), now=at(T0))

    assert counts(result) == (11, 1, 0, 10, 0)
    assert statuses(pg_engine) == {**{i: "dead" for i in bad}, good: "sent"}
    assert documents(mongo_db, "incoming_emails") == [email_doc(email(5))]


def test_field_name_with_nul_is_refused(pg_engine: sa.Engine, config: ReconConfig) -> None:
    """PostgreSQL's jsonb cannot even hold a NUL; a payload that arrives with one anyway (a
    `json` column, another writer) is refused before it reaches MongoDB."""
    payload = {**GOOD, "note\x00": "x"}
    with pytest.raises(sa.exc.DataError, match="unsupported Unicode escape sequence"):
        add_message(pg_engine, "incoming_emails", 1, "upsert", payload)
    claimed = OutboxMessage(1, "incoming_emails", "1", "upsert", payload, 0, T0)
    with pytest.raises(InvalidPayload, match=r"^field name 'note\\x00' contains a NUL"):
        plan_delivery(config, claimed)


# --- failures, backoff, dead letters --------------------------------------------------------


def test_write_failure_backs_off_then_delivers(servers: ServerUrls, pg_engine: sa.Engine,
                                               app_db: Db, mongo_db: Db,
                                               config: ReconConfig) -> None:
    row = email(1)
    insert(pg_engine, schema.incoming_emails, row)
    message_id = upsert_email(pg_engine, row)
    # times: 2, since pymongo would hide one failure behind a retry if it were retryable.
    with fail_point(servers, {"times": 2}, failCommands=["update"], errorCode=2):
        failed = deliver_outbox(pg_engine, app_db, config, now=at(T0))

    error = ("MongoDB write failed: Failing command via 'failCommand' failpoint (code 2)")
    assert counts(failed) == (1, 0, 1, 0, 0)
    stored = message(pg_engine, message_id)
    assert (stored["status"], stored["attempts"], stored["last_error"],
            stored["next_attempt_at"], stored["processed_at"]) == \
        ("failed", 1, error, T0 + timedelta(seconds=60), None)
    assert sync_state(pg_engine, 1) == ("failed", None, error)
    assert documents(mongo_db, "incoming_emails") == []

    retried = deliver_outbox(pg_engine, app_db, config, now=at(T0 + timedelta(seconds=60)))

    assert counts(retried) == (1, 1, 0, 0, 0)
    assert message(pg_engine, message_id)["status"] == "sent"
    assert documents(mongo_db, "incoming_emails") == [email_doc(row)]
    assert sync_state(pg_engine, 1) == ("synced", T0 + timedelta(seconds=60), None)


def test_write_concern_error_is_a_failed_attempt_even_though_applied(
        servers: ServerUrls, pg_engine: sa.Engine, app_db: Db, mongo_db: Db,
        config: ReconConfig) -> None:
    row = email(1)
    insert(pg_engine, schema.incoming_emails, row)
    message_id = upsert_email(pg_engine, row)
    with fail_point(servers, {"times": 1}, failCommands=["update"],
                    writeConcernError=faults.WRITE_CONCERN):
        failed = deliver_outbox(pg_engine, app_db, config, now=at(T0))

    error = "MongoDB write concern error: waiting for replication timed out"
    assert counts(failed) == (1, 0, 1, 0, 0)
    stored = message(pg_engine, message_id)
    assert (stored["status"], stored["attempts"], stored["last_error"],
            stored["next_attempt_at"]) == ("failed", 1, error, T0 + timedelta(seconds=60))
    assert sync_state(pg_engine, 1) == ("failed", None, error)
    assert documents(mongo_db, "incoming_emails") == [email_doc(row)]  # the server applied it

    retried = deliver_outbox(pg_engine, app_db, config, now=at(T0 + timedelta(seconds=60)))

    assert counts(retried) == (1, 1, 0, 0, 0)
    assert sync_state(pg_engine, 1) == ("synced", T0 + timedelta(seconds=60), None)


def test_backoff_doubles_to_the_cap_then_dead_letters(servers: ServerUrls, pg_engine: sa.Engine,
                                                      app_db: Db, mongo_db: Db,
                                                      config: ReconConfig) -> None:
    message_id = upsert_email(pg_engine, email(1))
    schedule = []
    clock = T0
    with fail_point(servers, "alwaysOn", failCommands=["update"], errorCode=2):
        for _ in range(config.settings.outbox.max_attempts):
            too_early = deliver_outbox(pg_engine, app_db, config,
                                       now=at(clock - timedelta(milliseconds=1)))
            assert too_early.attempted == 0
            result = deliver_outbox(pg_engine, app_db, config, now=at(clock))
            stored = message(pg_engine, message_id)
            schedule.append((counts(result), stored["status"], stored["attempts"],
                             (stored["next_attempt_at"] - clock).total_seconds()))
            clock = stored["next_attempt_at"]

    assert schedule == [
        ((1, 0, 1, 0, 0), "failed", 1, 60), ((1, 0, 1, 0, 0), "failed", 2, 120),
        ((1, 0, 1, 0, 0), "failed", 3, 240), ((1, 0, 1, 0, 0), "failed", 4, 480),
        ((1, 0, 1, 0, 0), "failed", 5, 960), ((1, 0, 1, 0, 0), "failed", 6, 1920),
        ((1, 0, 1, 0, 0), "failed", 7, 3600), ((1, 0, 0, 1, 0), "dead", 8, 3600)]
    assert counts(deliver_outbox(pg_engine, app_db, config, now=at(clock + timedelta(days=1)))) \
        == (0, 0, 0, 0, 0)
    assert documents(mongo_db, "incoming_emails") == []


def test_backoff_formula() -> None:
    from recon_pipeline.model.mapping import OutboxSettings

    settings = OutboxSettings(backoff_base_seconds=60, backoff_max_seconds=3600)
    assert [backoff_seconds(n, settings) for n in (1, 2, 3, 7, 8, 500)] == \
        [60, 120, 240, 3600, 3600, 3600]


@pytest.mark.parametrize("batch_size", [500, 2], ids=["one-batch", "batches-of-2"])
def test_mongodb_down_charges_nothing_and_touches_nothing_else(
        pg_engine: sa.Engine, mongo_db: Db, config: ReconConfig, batch_size: int) -> None:
    """Batches of 2: the next batch is already claimed while the first one fails; it is
    given back untouched."""
    malformed = add_message(pg_engine, "invoices", 9, "upsert", {})
    rows = [email(i) for i in (1, 2, 3)]
    insert(pg_engine, schema.incoming_emails, *rows)
    ids = [upsert_email(pg_engine, row) for row in rows]
    before = {i: message(pg_engine, i) for i in [malformed, *ids]}
    down = create_client(f"mongodb://app:s3cret@127.0.0.1:{free_port()}/?directConnection=true",
                         serverSelectionTimeoutMS=300, connectTimeoutMS=300)

    result = deliver_outbox(pg_engine, down[mongo_db.name], tuned(config, batch_size=batch_size),
                            now=at(T0))

    assert (counts(result), result.mongo_unreachable) == ((1, 0, 1, 0, 0), True)
    hit = message(pg_engine, ids[0])
    # An outage is not the message's fault: no attempt charged, the backoff still applies.
    assert (hit["status"], hit["attempts"], hit["next_attempt_at"]) == \
        ("failed", 0, T0 + timedelta(seconds=60))
    assert hit["last_error"].startswith("MongoDB unreachable: ")
    assert "s3cret" not in hit["last_error"]
    assert {i: message(pg_engine, i) for i in [malformed, *ids[1:]]} == \
        {i: before[i] for i in [malformed, *ids[1:]]}
    assert sync_state(pg_engine, 1)[0] == "failed"
    assert sync_state(pg_engine, 2) == ("pending", None, None)

    recovered = deliver_outbox(pg_engine, mongo_db, config, now=at(T0 + timedelta(minutes=1)))

    assert counts(recovered) == (4, 3, 0, 1, 0)
    assert documents(mongo_db, "incoming_emails") == [email_doc(row) for row in rows]


def test_an_outage_mid_batch_keeps_what_was_delivered_before_it(
        servers: ServerUrls, pg_engine: sa.Engine, app_db: Db, mongo_db: Db,
        config: ReconConfig) -> None:
    """Entities are written one after another (clients, then incoming_emails): the
    connection is lost on the second, after the first was delivered."""
    client = client_row("C001", at=T0)
    insert(pg_engine, schema.clients, client)
    sent = add_message(pg_engine, "clients", "C001", "upsert", row_payload(client))
    row = email(1)
    insert(pg_engine, schema.incoming_emails, row)
    hit = upsert_email(pg_engine, row, attempts=2)
    with fail_point(servers, {"skip": 1}, failCommands=["update"], closeConnection=True):
        result = deliver_outbox(pg_engine, app_db, config, now=at(T0))

    assert (counts(result), result.mongo_unreachable) == ((2, 1, 1, 0, 0), True)
    assert message(pg_engine, sent)["status"] == "sent"
    stored = message(pg_engine, hit)
    assert (stored["status"], stored["attempts"], stored["next_attempt_at"]) == (
        "failed", 2, T0 + timedelta(seconds=240))
    assert [d["_id"] for d in documents(mongo_db, "clients")] == ["C001"]
    assert documents(mongo_db, "incoming_emails") == []


# --- crashes and concurrent deliveries (real processes) ---------------------------------------

WORKER = """
import json, sys
from dataclasses import replace
from datetime import datetime
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.engine.outbox.deliver import deliver_outbox
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.stores.mongo import create_client
from recon_pipeline.stores.postgres import create_engine
from recon_pipeline.stores.postgres import create_engine

pg_url, mongo_url, database, app, batch_size, stamp = sys.argv[1:7]
engine = create_engine(pg_url)
config = load_mapping(packaged_mapping_path(), engine)
outbox = replace(config.settings.outbox, batch_size=int(batch_size))
config = replace(config, settings=replace(config.settings, outbox=outbox))
db = create_client(mongo_url, appName=app)[database]
moment = datetime.fromisoformat(stamp)
result = deliver_outbox(engine, db, config, now=lambda: moment, max_batches=1)
print(json.dumps({"attempted": result.attempted, "sent": result.sent}))
"""
DEADLINE_S = 60.0


def start_worker(servers: ServerUrls, pg_url: str, db: Db, name: str, *, batch_size: int,
                 stamp: datetime, app: str = APP) -> subprocess.Popen[str]:
    """A delivering process whose PostgreSQL sessions are named `name`."""
    url = sa.make_url(pg_url).update_query_dict({"application_name": name})
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url.render_as_string(hide_password=False),
         servers.mongodb_url, db.name, app, str(batch_size), stamp.isoformat()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sessions(engine: sa.Engine, name: str) -> list[tuple[int, str, str | None]]:
    """(pid, state, wait_event_type) of the PostgreSQL sessions named `name`."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(  # type: ignore[misc]
            "select pid, state, wait_event_type from pg_stat_activity "
            "where application_name = :name"), {"name": name})]


def claimable(engine: sa.Engine) -> int:
    """How many due messages no delivery holds right now."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "select count(*) from (select id from outbox_messages where status in "
            "('pending', 'failed') for update skip locked) free")).scalar_one())


def poll(ready: Callable[[], bool], what: str) -> None:
    wait_until(ready, what, DEADLINE_S)


@contextmanager
def locked_source_rows(engine: sa.Engine) -> Iterator[None]:
    """Hold every incoming_emails row, so a delivery stops at its sync_tracking update:
    after its MongoDB writes, before its commit."""
    with engine.connect() as conn:
        conn.execute(sa.text("select id from incoming_emails for update")).all()
        try:
            yield
        finally:
            conn.rollback()


@contextmanager
def running(workers: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Whatever happens in the block, no worker outlives it."""
    try:
        yield
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate(timeout=DEADLINE_S)


@pytest.fixture
def reference(servers: ServerUrls, schema_template: str,
              mongo_db: Db) -> Iterator[tuple[sa.Engine, Db]]:
    """A second pair of databases, for the run nothing interrupts."""
    name = f"recon_ref_{uuid.uuid4().hex[:10]}"
    ensure_database(servers.postgres_admin_url, name, template=schema_template)
    engine = create_engine(servers.postgres_url(name))
    client = create_client(servers.mongodb_url)
    try:
        yield engine, client[f"{mongo_db.name}_ref"]
    finally:
        engine.dispose()
        client.drop_database(f"{mongo_db.name}_ref")
        client.close()
        dsn = servers.postgres_admin_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("drop database if exists {} with (force)").format(
                psycopg.sql.Identifier(name)))


def seed_emails(engine: sa.Engine, count: int) -> list[dict[str, Any]]:
    rows = [email(i, T0 - timedelta(seconds=i)) for i in range(1, count + 1)]
    insert(engine, schema.incoming_emails, *rows)
    for row in rows:
        upsert_email(engine, row)
    return rows


def outbox_state(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(schema.outbox_messages).order_by(schema.outbox_messages.c.id)).mappings()]


@pytest.mark.parametrize("kill_point", ["during-mongodb-write", "after-mongodb-write"])
def test_sigkill_mid_batch_leaves_every_claimed_message_due(
        servers: ServerUrls, pg_url: str, pg_engine: sa.Engine, mongo_db: Db,
        config: ReconConfig, reference: tuple[sa.Engine, Db], kill_point: str) -> None:
    seed_emails(pg_engine, 6)
    before = outbox_state(pg_engine)
    name = f"outbox-crash-{kill_point}"
    if kill_point == "during-mongodb-write":
        # The write blocks, then fails: whatever the kill leaves, it wrote nothing.
        hold: Any = fail_point(servers, {"times": 1}, failCommands=["update"],
                               blockConnection=True, blockTimeMS=5000, errorCode=2)
        def stuck() -> bool:
            return [s[1] for s in sessions(pg_engine, name)] == ["idle in transaction"]
    else:
        hold = locked_source_rows(pg_engine)
        def stuck() -> bool:
            return [s[2] for s in sessions(pg_engine, name)] == ["Lock"]
    with hold:
        worker = start_worker(servers, pg_url, mongo_db, name, batch_size=10, stamp=T0)
        with running([worker]):
            poll(lambda: stuck() and claimable(pg_engine) == 0, "the worker mid-batch")
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=DEADLINE_S) == -signal.SIGKILL
    # Its session ends once PostgreSQL notices the dead client; that rolls the claim back.
    poll(lambda: not sessions(pg_engine, name), "the killed worker's session to end")

    assert outbox_state(pg_engine) == before
    assert claimable(pg_engine) == 6
    written = documents(mongo_db, "incoming_emails")
    assert len(written) == (0 if kill_point == "during-mongodb-write" else 6)

    rerun = deliver_outbox(pg_engine, mongo_db, config, now=at(T0))
    ref_engine, ref_db = reference
    seed_emails(ref_engine, 6)
    uninterrupted = deliver_outbox(ref_engine, ref_db, config, now=at(T0))

    assert counts(rerun) == counts(uninterrupted) == (6, 6, 0, 0, 0)
    assert documents(mongo_db, "incoming_emails") == documents(ref_db, "incoming_emails")
    assert outbox_state(pg_engine) == outbox_state(ref_engine)


def test_two_deliveries_at_once_never_share_a_message(servers: ServerUrls, pg_url: str,
                                                      pg_engine: sa.Engine,
                                                      mongo_db: Db) -> None:
    rows = seed_emails(pg_engine, 10)
    stamps = {"outbox-a": T0 + timedelta(seconds=1), "outbox-b": T0 + timedelta(seconds=2)}
    workers: list[subprocess.Popen[str]] = []
    with running(workers):
        with locked_source_rows(pg_engine):
            workers += [start_worker(servers, pg_url, mongo_db, name, batch_size=5, stamp=stamp)
                        for name, stamp in stamps.items()]
            poll(lambda: all([s[2] for s in sessions(pg_engine, n)] == ["Lock"]
                             for n in stamps), "both workers mid-batch")
            # Both hold a claim at this moment, and between them every message.
            assert claimable(pg_engine) == 0
        outputs = [json.loads(w.communicate(timeout=DEADLINE_S)[0]) for w in workers]

    assert [w.returncode for w in workers] == [0, 0]
    assert outputs == [{"attempted": 5, "sent": 5}, {"attempted": 5, "sent": 5}]
    by_process: dict[datetime, set[int]] = {}
    for row in outbox_state(pg_engine):
        assert row["status"] == "sent"
        by_process.setdefault(row["processed_at"], set()).add(row["id"])
    assert sorted(by_process) == sorted(stamps.values())
    a, b = by_process.values()
    assert len(a) == len(b) == 5 and not a & b and a | b == set(range(1, 11))
    assert documents(mongo_db, "incoming_emails") == [email_doc(row) for row in rows]
