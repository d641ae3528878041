"""Schemas that are not the demo's, through whole runs of `reconciliation_job`: naive
timestamps in a database whose TimeZone is not UTC, documents the application wrote itself
(no `_recon_version`), and a trigger that bumps `updated_at` whenever a sync mark is
written (SPEC 6, "Window", "Repair", "Outbox retry")."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.raw_bson import RawBSONDocument
from dagster import DagsterInstance
from pymongo.database import Database

import recon_pipeline
from recon_pipeline.definitions import defs
from recon_pipeline.defs.partitions import last_complete_hour
from recon_pipeline.model.mapping import MappingError
from recon_pipeline.stores import reports
from recon_pipeline.stores.postgres import create_engine, load_mapping
from recon_pipeline_tests.builders import add_outbox
from recon_pipeline_tests.dagster_support import SEED_NOW, test_resources
from recon_pipeline_tests.read_model import mismatch_rows

PARTITION = last_complete_hour(SEED_NOW)
# Every instant below is an hour or more in the past, so a run's clock sees it settled.
W0, W1 = SEED_NOW - timedelta(hours=6), SEED_NOW - timedelta(hours=2)
US = timedelta(microseconds=1)


def run_job(pg_url: str, mongo_db: Database[Any], mapping: Path,
            **options: Any) -> dict[str, Any]:
    """One run of the job on this test's servers; its report row."""
    job = defs.resolve_job_def("reconciliation_job")
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=recon_pipeline.run_config(**options), instance=instance,
            partition_key=PARTITION, resources=test_resources(pg_url, mongo_db, mapping),
            raise_on_error=False)
    assert result.success
    engine = create_engine(pg_url)
    try:
        [row] = reports.recent_reports(engine, 1)
    finally:
        engine.dispose()
    return row


def counts(row: dict[str, Any]) -> dict[str, int]:
    names = ("records_checked", "mismatches_found", "missing_in_mongo", "field_mismatches",
             "orphans_in_mongo", "repaired", "repair_failed", "outbox_attempted",
             "outbox_sent", "outbox_stale", "outbox_failed", "outbox_dead")
    return {name: row[name] for name in names}


def write_mapping(tmp_path: Path, entities: str, *, settle_seconds: int = 60,
                  delete_orphans: bool = False) -> Path:
    path = tmp_path / "mapping.yaml"
    path.write_text(f"settings: {{settle_seconds: {settle_seconds}, "
                    f"delete_orphans: {str(delete_orphans).lower()}}}\nentities:\n"
                    + textwrap.indent(textwrap.dedent(entities), "  "))
    return path


def utc(moment: datetime) -> datetime:
    """The instant a value stands for (naive ones are UTC), at MongoDB's precision."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# --- naive timestamps in a database whose TimeZone is America/New_York ----------------------

SHIPMENTS = """\
shipments:
  source: {table: shipments, key: shipment_no, updated_at: changed_at}
  target: {collection: shipments, key: _id}
  fields:
    status: status
    shipped_at: shipped_at
    changed_at: updated_at
"""


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def new_york(pg_url: str, pg_engine: sa.Engine) -> None:
    """The test database's default TimeZone is America/New_York: every new session gets it,
    unless it sets its own (the project's do)."""
    name = sa.make_url(pg_url).database
    with pg_engine.connect() as conn:
        conn.execute(sa.text(f"alter database \"{name}\" set timezone to 'America/New_York'"))
        conn.execute(sa.text("create table shipments (shipment_no bigint primary key, "
                             "status text, shipped_at timestamp, changed_at timestamp)"))
        conn.commit()
    pg_engine.dispose()  # new sessions from here on


def test_sessions_of_the_project_run_in_utc_whatever_the_database_says(
    pg_url: str, new_york: None
) -> None:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert conn.execute("show timezone").fetchone() == ("America/New_York",)
    engine = create_engine(pg_url + "?options=-c%20statement_timeout%3D5000")
    with engine.connect() as conn:
        assert conn.execute(sa.text("show timezone")).scalar_one() == "UTC"
        assert conn.execute(sa.text("show statement_timeout")).scalar_one() == "5s"
    engine.dispose()


# Rows: (key, status, shipped_at, changed_at), all naive UTC. Inside [W0, W1): 1 missing in
# MongoDB, 2 and 3 drifted, 4 right. Just outside: 5 (a microsecond early, missing) and 6
# (exactly at the end, drifted). A window read in New York time would be hours off.
def shipment_rows() -> list[tuple[int, str, datetime, datetime]]:
    start, end = naive(W0), naive(W1)
    return [(1, "packed", start - timedelta(hours=3), start),
            (2, "shipped", start + timedelta(minutes=5), start + timedelta(minutes=30)),
            (3, "shipped", start + timedelta(minutes=7, microseconds=250_123),
             end - timedelta(milliseconds=1)),
            (4, "delivered", start + timedelta(minutes=9), start + timedelta(hours=1)),
            (5, "packed", start - timedelta(hours=1), start - US),
            (6, "shipped", start + timedelta(hours=1), end)]


def seed_shipments(pg_engine: sa.Engine, mongo_db: Database[Any], padding: int) -> None:
    rows = shipment_rows()
    # `padding` right rows long before the window make it sparse (the `$in` look-up path);
    # without them it is dense (one sorted cursor per side, the scan path).
    old = naive(W0) - timedelta(days=30)
    rows += [(100 + i, "delivered", old, old + timedelta(minutes=i)) for i in range(padding)]
    with pg_engine.begin() as conn:
        conn.execute(sa.text("insert into shipments values (:k, :s, :shipped, :changed)"),
                     [{"k": k, "s": s, "shipped": sh, "changed": ch} for k, s, sh, ch in rows])

    def doc(key: int, status: str, shipped: datetime, changed: datetime) -> dict[str, Any]:
        return {"_id": key, "status": status, "shipped_at": utc(shipped),
                "updated_at": utc(changed), "_recon_version": utc(changed)}

    by_key = {r[0]: r for r in rows}
    docs = [doc(*by_key[k]) for k in by_key if k not in (1, 5)]
    for d in docs:
        if d["_id"] == 2:
            d["status"] = "packed"
        if d["_id"] == 3:  # the instant a local-time reading would have written
            d["shipped_at"] = d["shipped_at"] + timedelta(hours=5)
        if d["_id"] == 6:
            d["status"] = "lost"
    docs.append({"_id": 99, "status": "ghost", "updated_at": W0 + timedelta(hours=2)})
    docs.append({"_id": 98, "status": "ghost", "updated_at": W0 - timedelta(days=3)})
    mongo_db.shipments.insert_many(docs)


@pytest.mark.parametrize("padding", [0, 40], ids=["scan", "lookup"])
def test_naive_timestamps_are_utc_in_a_new_york_database(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path,
    new_york: None, padding: int,
) -> None:
    seed_shipments(pg_engine, mongo_db, padding)
    mapping = write_mapping(tmp_path, SHIPMENTS)
    window = {"window_start": W0, "window_end": W1}

    first = run_job(pg_url, mongo_db, mapping, **window)
    assert counts(first) == {
        "records_checked": 4, "mismatches_found": 4, "missing_in_mongo": 1,
        "field_mismatches": 2, "orphans_in_mongo": 1, "repaired": 3, "repair_failed": 0,
        "outbox_attempted": 0, "outbox_sent": 0, "outbox_stale": 0, "outbox_failed": 0,
        "outbox_dead": 0}
    assert mismatch_rows(pg_engine) == [
        ("1", "missing_in_mongo", "repaired", None), ("2", "field_mismatch", "repaired", None),
        ("3", "field_mismatch", "repaired", None), ("99", "orphan_in_mongo", "reported", None)]
    rows = {r[0]: r for r in shipment_rows()}
    for key in (1, 2, 3):
        _, status, shipped, changed = rows[key]
        assert mongo_db.shipments.find_one({"_id": key}) == {
            "_id": key, "status": status, "shipped_at": utc(shipped),
            "updated_at": utc(changed), "_recon_version": utc(changed)}
    assert mongo_db.shipments.find_one({"_id": 5}) is None  # outside: not judged
    assert mongo_db.shipments.find_one({"_id": 6})["status"] == "lost"
    with pg_engine.connect() as conn:  # the source is only read
        assert conn.execute(sa.text("select count(*) from shipments")).scalar_one() == \
            6 + padding

    second = run_job(pg_url, mongo_db, mapping, **window)
    assert (second["records_checked"], second["mismatches_found"],
            second["orphans_in_mongo"], second["repaired"]) == (4, 1, 1, 0)

    full = run_job(pg_url, mongo_db, mapping, full_scan=True)
    assert counts(full) == {
        "records_checked": 6 + padding, "mismatches_found": 4, "missing_in_mongo": 1,
        "field_mismatches": 1, "orphans_in_mongo": 2, "repaired": 2, "repair_failed": 0,
        "outbox_attempted": 0, "outbox_sent": 0, "outbox_stale": 0, "outbox_failed": 0,
        "outbox_dead": 0}
    for key in (5, 6):
        _, status, shipped, changed = rows[key]
        assert mongo_db.shipments.find_one({"_id": key}) == {
            "_id": key, "status": status, "shipped_at": utc(shipped),
            "updated_at": utc(changed), "_recon_version": utc(changed)}
    again = run_job(pg_url, mongo_db, mapping, full_scan=True)
    assert (again["records_checked"], again["mismatches_found"], again["orphans_in_mongo"],
            again["repaired"]) == (6 + padding, 2, 2, 0)
    assert mongo_db.shipments.count_documents({}) == 8 + padding


def test_an_updated_at_that_is_not_a_timestamp_is_refused_naming_entity_and_column(
    pg_engine: sa.Engine, tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table parcels (id bigint primary key, weight int, "
                             "changed_on date)"))
    mapping = write_mapping(tmp_path, """\
        parcels:
          source: {table: parcels, key: id, updated_at: changed_on}
          target: {collection: parcels}
          fields: {weight: weight}
        """)
    with pytest.raises(MappingError) as raised:
        load_mapping(mapping, pg_engine)
    assert str(raised.value) == (
        f"mapping file {mapping}: mapping entity 'parcels': source 'updated_at' column "
        "'changed_on' is DATE, not a timestamp (with or without time zone)")


# --- documents the application wrote itself ---------------------------------------------------

TICKETS = """\
tickets:
  source: {table: tickets, key: id, updated_at: updated_at}
  target: {collection: tickets, key: _id}
  fields: {subject: subject, updated_at: updated_at}
ticket_notes:
  source: {table: ticket_notes, key: id, updated_at: updated_at}
  target:
    collection: tickets
    embedded: {array: notes, parent_key: ticket_id, element_key: note_id}
  fields: {body: body, updated_at: updated_at}
"""
OLD, NEW = W0 + timedelta(minutes=10), W0 + timedelta(minutes=20)


def create_tickets(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("create table tickets (id bigint primary key, subject text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("create table ticket_notes (id bigint primary key, "
                             "ticket_id bigint, body text, updated_at timestamptz)"))


def outbox_statuses(engine: sa.Engine) -> list[tuple[str, str, str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(  # type: ignore[misc]
            "select aggregate_type, aggregate_id, status, attempts from outbox_messages"
            " order by id"))]


def raw(db: Database[Any], collection: str, key: Any) -> bytes:
    handle = db.get_collection(collection, CodecOptions(document_class=RawBSONDocument))
    document = handle.find_one({"_id": key})
    assert document is not None
    return bytes(document.raw)


def test_a_late_outbox_message_never_overwrites_what_the_application_wrote(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    create_tickets(pg_engine)
    with pg_engine.begin() as conn:  # the source holds the application's latest writes
        conn.execute(sa.text("insert into tickets values (1, 'reopened', :new), "
                             "(2, 'renamed', :new)"), {"new": NEW})
        conn.execute(sa.text("insert into ticket_notes values (10, 1, 'edited', :new), "
                             "(11, 1, 'typo fixed', :new)"), {"new": NEW})
    # The application wrote these itself (no _recon_version): ticket 1 and note 10 after
    # the late messages below, ticket 2 and note 11 before theirs.
    mongo_db.tickets.insert_many([
        {"_id": 1, "subject": "reopened", "updated_at": NEW, "owner": "app", "notes": [
            {"note_id": 10, "body": "edited", "updated_at": NEW, "pinned": True},
            {"note_id": 11, "body": "typo fixd", "updated_at": OLD}]},
        {"_id": 2, "subject": "draft", "updated_at": OLD, "owner": "app"}])
    add_outbox(pg_engine, [
        ("tickets", 1, {"id": 1, "subject": "opened", "updated_at": OLD.isoformat()}),
        ("ticket_notes", 10, {"id": 10, "ticket_id": 1, "body": "first draft",
                              "updated_at": OLD.isoformat()}),
        ("tickets", 2, {"id": 2, "subject": "renamed", "updated_at": NEW.isoformat()}),
        ("ticket_notes", 11, {"id": 11, "ticket_id": 1, "body": "typo fixed",
                              "updated_at": NEW.isoformat()})])
    mapping = write_mapping(tmp_path, TICKETS)

    row = run_job(pg_url, mongo_db, mapping, window_start=W0, window_end=W1)
    assert counts(row) == {
        "records_checked": 4, "mismatches_found": 0, "missing_in_mongo": 0,
        "field_mismatches": 0, "orphans_in_mongo": 0, "repaired": 0, "repair_failed": 0,
        "outbox_attempted": 4, "outbox_sent": 4, "outbox_stale": 2, "outbox_failed": 0,
        "outbox_dead": 0}
    assert outbox_statuses(pg_engine) == [
        ("tickets", "1", "sent", 0), ("ticket_notes", "10", "sent", 0),
        ("tickets", "2", "sent", 0), ("ticket_notes", "11", "sent", 0)]
    # Ticket 1 was untouched by its late message, and so was note 10 inside it, while
    # note 11 (older there) was written.
    after = mongo_db.tickets.find_one({"_id": 1})
    assert after["notes"][0] == {"note_id": 10, "body": "edited", "updated_at": NEW,
                                 "pinned": True}
    assert after["notes"][1] == {"note_id": 11, "body": "typo fixed", "updated_at": NEW,
                                 "_recon_version": NEW}
    assert {k: v for k, v in after.items() if k != "notes"} == {
        "_id": 1, "subject": "reopened", "updated_at": NEW, "owner": "app"}
    assert mongo_db.tickets.find_one({"_id": 2}) == {
        "_id": 2, "subject": "renamed", "updated_at": NEW, "owner": "app",
        "_recon_version": NEW}


def test_a_late_message_leaves_an_application_document_byte_for_byte_unchanged(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    create_tickets(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(sa.text("insert into tickets values (1, 'reopened', :new)"),
                     {"new": NEW})
        conn.execute(sa.text("insert into ticket_notes values (10, 3, 'edited', :new)"),
                     {"new": NEW})
    mongo_db.tickets.insert_many([
        {"_id": 1, "subject": "reopened", "updated_at": NEW, "owner": "app"},
        {"_id": 3, "subject": "other", "notes": [
            {"note_id": 10, "body": "edited", "updated_at": NEW, "pinned": True}]}])
    add_outbox(pg_engine, [
        ("tickets", 1, {"id": 1, "subject": "opened", "updated_at": OLD.isoformat()}),
        ("ticket_notes", 10, {"id": 10, "ticket_id": 3, "body": "first draft",
                              "updated_at": OLD.isoformat()})])
    before = {key: raw(mongo_db, "tickets", key) for key in (1, 3)}

    row = run_job(pg_url, mongo_db, write_mapping(tmp_path, TICKETS),
                  window_start=W0, window_end=W1)
    assert (row["outbox_attempted"], row["outbox_sent"], row["outbox_stale"],
            row["outbox_failed"], row["records_checked"], row["mismatches_found"]) == (
        2, 2, 2, 0, 2, 0)
    assert outbox_statuses(pg_engine) == [("tickets", "1", "sent", 0),
                                          ("ticket_notes", "10", "sent", 0)]
    assert {key: raw(mongo_db, "tickets", key) for key in (1, 3)} == before


def test_a_repair_never_overwrites_a_newer_application_document(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    create_tickets(pg_engine)
    with pg_engine.begin() as conn:  # the source's row is older than what MongoDB holds
        conn.execute(sa.text("insert into tickets values (1, 'opened', :old), "
                             "(2, 'closed', :old)"), {"old": OLD})
        conn.execute(sa.text("insert into ticket_notes values (10, 1, 'first', :old)"),
                     {"old": OLD})
    mongo_db.tickets.insert_many([
        {"_id": 1, "subject": "reopened", "updated_at": NEW, "owner": "app",
         "notes": [{"note_id": 10, "body": "second", "updated_at": NEW}]},
        {"_id": 2, "subject": "open", "updated_at": OLD - timedelta(minutes=5)}])
    before = raw(mongo_db, "tickets", 1)

    row = run_job(pg_url, mongo_db, write_mapping(tmp_path, TICKETS),
                  window_start=W0, window_end=W1)
    assert counts(row) == {
        "records_checked": 3, "mismatches_found": 3, "missing_in_mongo": 0,
        "field_mismatches": 3, "orphans_in_mongo": 0, "repaired": 1, "repair_failed": 2,
        "outbox_attempted": 0, "outbox_sent": 0, "outbox_stale": 0, "outbox_failed": 0,
        "outbox_dead": 0}
    assert row["status"] == "needs_attention"
    guard = "version guard: MongoDB holds a newer source version"
    assert mismatch_rows(pg_engine) == [("1", "field_mismatch", "failed", guard),
                                        ("10", "field_mismatch", "failed", guard),
                                        ("2", "field_mismatch", "repaired", None)]
    assert raw(mongo_db, "tickets", 1) == before
    assert mongo_db.tickets.find_one({"_id": 2}) == {
        "_id": 2, "subject": "closed", "updated_at": OLD, "_recon_version": OLD}


def test_a_recorded_version_decides_over_a_newer_updated_at(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """Documents this project wrote (`_recon_version` older than the row) whose
    `updated_at` someone moved later: `_recon_version` is the version (SPEC 6), for the
    outbox (whose blind guard refuses these, then judges them on a fresh read) and repair."""
    create_tickets(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(sa.text("insert into tickets values (4, 'from message', :old), "
                             "(5, 'from source', :old)"), {"old": OLD})
    earlier = OLD - timedelta(minutes=10)
    mongo_db.tickets.insert_many([
        {"_id": key, "subject": "edited", "updated_at": NEW, "_recon_version": earlier}
        for key in (4, 5)])
    add_outbox(pg_engine, [("tickets", 4, {"id": 4, "subject": "from message",
                                           "updated_at": OLD.isoformat()})])

    row = run_job(pg_url, mongo_db, write_mapping(tmp_path, TICKETS),
                  window_start=W0, window_end=W1)
    assert counts(row) == {
        "records_checked": 2, "mismatches_found": 1, "missing_in_mongo": 0,
        "field_mismatches": 1, "orphans_in_mongo": 0, "repaired": 1, "repair_failed": 0,
        "outbox_attempted": 1, "outbox_sent": 1, "outbox_stale": 0, "outbox_failed": 0,
        "outbox_dead": 0}
    assert outbox_statuses(pg_engine) == [("tickets", "4", "sent", 0)]
    assert list(mongo_db.tickets.find({}, sort=[("_id", 1)])) == [
        {"_id": 4, "subject": "from message", "updated_at": OLD, "_recon_version": OLD},
        {"_id": 5, "subject": "from source", "updated_at": OLD, "_recon_version": OLD}]


def test_orphans_the_application_wrote_are_deleted_while_unchanged(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """With `delete_orphans`, an orphan without `_recon_version` (its `updated_at` is its
    version) is deleted only as it was read: documents and elements alike."""
    create_tickets(pg_engine)
    with pg_engine.begin() as conn:
        conn.execute(sa.text("insert into tickets values (1, 'kept', :old)"), {"old": OLD})
    mongo_db.tickets.insert_many([
        {"_id": 1, "subject": "kept", "updated_at": OLD, "notes": [
            {"note_id": 10, "body": "orphan note", "updated_at": OLD},
            {"note_id": 11, "body": "undated orphan note"}]},
        {"_id": 7, "subject": "orphan", "updated_at": OLD, "owner": "app"}])
    mapping = write_mapping(tmp_path, TICKETS, delete_orphans=True)

    row = run_job(pg_url, mongo_db, mapping, full_scan=True)
    assert (row["records_checked"], row["orphans_in_mongo"], row["repaired"],
            row["repair_failed"]) == (1, 3, 3, 0)
    assert list(mongo_db.tickets.find()) == [
        {"_id": 1, "subject": "kept", "updated_at": OLD, "notes": []}]


# --- a trigger that bumps updated_at on every update ------------------------------------------

INVOICES = {"document": """\
invoices:
  source:
    table: invoices
    key: id
    updated_at: updated_at
    sync_tracking: {status: sync_status, synced_at: synced_at, error: sync_error}
  target: {collection: invoices, key: _id}
  fields: {amount: amount, state: state, updated_at: updated_at}
""", "embedded": """\
invoices:
  source:
    table: invoices
    key: id
    updated_at: updated_at
    sync_tracking: {status: sync_status, synced_at: synced_at, error: sync_error}
  target:
    collection: accounts
    embedded: {array: invoices, parent_key: account, element_key: invoice_id}
  fields: {amount: amount, state: state, updated_at: updated_at}
"""}


def create_invoices(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "create table invoices (id bigint primary key, account text default 'A1',"
            " amount numeric(12,2), state text, sync_status text default 'pending',"
            " synced_at timestamptz, sync_error text, updated_at timestamptz)"))
        conn.execute(sa.text(
            "create function touch() returns trigger language plpgsql as"
            " $$ begin new.updated_at := now(); return new; end $$"))
        conn.execute(sa.text("create trigger invoices_touch before update on invoices"
                             " for each row execute function touch()"))
        conn.execute(sa.text(
            "insert into invoices (id, amount, state, updated_at)"
            " select i, i * 10.5, 'open', cast(:at as timestamptz) + i * interval '1 second'"
            " from generate_series(1, :n) i"), {"at": W0, "n": rows})


def invoice_rows(engine: sa.Engine) -> dict[int, tuple[str, datetime]]:
    with engine.connect() as conn:
        return {r.id: (r.sync_status, r.updated_at) for r in conn.execute(sa.text(
            "select id, sync_status, updated_at from invoices order by id"))}


def seed_invoice_targets(db: Database[Any], shape: str,
                         targets: list[dict[str, Any]]) -> None:
    if shape == "document":
        db.invoices.insert_many([{"_id": t.pop("invoice_id"), **t} for t in targets])
    else:
        db.accounts.insert_one({"_id": "A1", "invoices": targets})


def invoice_targets(db: Database[Any], shape: str) -> dict[int, dict[str, Any]]:
    """Each invoice's document or element, by invoice id."""
    if shape == "document":
        return {d.pop("_id"): d for d in db.invoices.find()}
    [account] = db.accounts.find()
    return {e.pop("invoice_id"): e for e in account["invoices"]}


@pytest.mark.parametrize("shape", ["document", "embedded"])
def test_sync_marks_bumped_by_a_trigger_do_not_cause_another_repair(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path, shape: str
) -> None:
    create_invoices(pg_engine, 6)
    seeded = invoice_rows(pg_engine)
    # 1 and 2 missing in MongoDB, 3 and 4 drifted, 5 and 6 right.
    seed_invoice_targets(mongo_db, shape, [
        {"invoice_id": i, "amount": Decimal128(f"{i * 10.5:.2f}" if i > 4 else "0"),
         "state": "open", "updated_at": seeded[i][1], "_recon_version": seeded[i][1]}
        for i in range(3, 7)])
    mapping = write_mapping(tmp_path, INVOICES[shape], settle_seconds=0)

    first = run_job(pg_url, mongo_db, mapping, window_start=W0,
                    window_end=datetime.now(UTC))
    assert (first["records_checked"], first["missing_in_mongo"], first["field_mismatches"],
            first["repaired"], first["repair_failed"]) == (6, 2, 2, 4, 0)
    marked = invoice_rows(pg_engine)
    assert [marked[i][0] for i in range(1, 7)] == ["synced"] * 4 + ["pending"] * 2
    assert [marked[i][1] for i in (5, 6)] == [seeded[i][1] for i in (5, 6)]
    targets = invoice_targets(mongo_db, shape)
    for i in range(1, 7):  # the marks bumped 1-4; MongoDB got those versions too
        assert marked[i][1] > seeded[i][1] or i > 4
        assert targets[i] == {"amount": Decimal128(f"{i * 10.5:.2f}"), "state": "open",
                              "updated_at": utc(marked[i][1]),
                              "_recon_version": utc(marked[i][1])}

    second = run_job(pg_url, mongo_db, mapping, window_start=W0,
                     window_end=datetime.now(UTC))
    assert (second["records_checked"], second["mismatches_found"], second["repaired"],
            second["status"]) == (6, 0, 0, "success")
    assert invoice_rows(pg_engine) == marked  # no more marks, no more bumps
    assert invoice_targets(mongo_db, shape) == targets


@pytest.mark.parametrize("shape", ["document", "embedded"])
def test_sync_marks_of_outbox_deliveries_bumped_by_a_trigger_converge(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path, shape: str
) -> None:
    create_invoices(pg_engine, 3)
    seeded = invoice_rows(pg_engine)
    add_outbox(pg_engine, [("invoices", i, {
        "id": i, "account": "A1", "amount": f"{i * 10.5:.2f}", "state": "open",
        "updated_at": seeded[i][1].isoformat()}) for i in (1, 2, 3)])
    mapping = write_mapping(tmp_path, INVOICES[shape], settle_seconds=0)
    seeded_at = datetime.now(UTC)

    first = run_job(pg_url, mongo_db, mapping, window_start=W0, window_end=seeded_at)
    assert (first["outbox_attempted"], first["outbox_sent"], first["outbox_stale"]) == (3, 3, 0)
    # The diff ran after delivery: the marks had moved every row past this window's end.
    assert (first["records_checked"], first["mismatches_found"]) == (0, 0)
    marked = invoice_rows(pg_engine)
    targets = invoice_targets(mongo_db, shape)
    for i in (1, 2, 3):
        assert marked[i][0] == "synced" and marked[i][1] > seeded_at
        assert targets[i] == {"amount": Decimal128(f"{i * 10.5:.2f}"), "state": "open",
                              "updated_at": utc(marked[i][1]),
                              "_recon_version": utc(marked[i][1])}

    second = run_job(pg_url, mongo_db, mapping, window_start=W0,
                     window_end=datetime.now(UTC))
    assert (second["records_checked"], second["mismatches_found"], second["repaired"],
            second["outbox_attempted"], second["status"]) == (3, 0, 0, 0, "success")
    assert invoice_rows(pg_engine) == marked
    assert invoice_targets(mongo_db, shape) == targets
