"""Scopes (SPEC 5, "Scopes") through whole runs of `reconciliation_job`: soft deletes, a
tenant column, a collection holding two document types, the outbox, and the mapping errors
a `where` can raise at load time."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.database import Database

from recon_pipeline.engine.projection import out_of_scope_error
from recon_pipeline.model.mapping import MappingError
from recon_pipeline.model.scope import source_scope_admits
from recon_pipeline.stores import reports
from recon_pipeline.stores.postgres import load_mapping
from recon_pipeline.stores.source import fetch_rows
from recon_pipeline.stores.target import ensure_target_indexes
from recon_pipeline_tests.builders import add_outbox
from recon_pipeline_tests.dagster_support import SEED_NOW, run_job
from recon_pipeline_tests.read_model import mismatch_rows

W0, W1 = SEED_NOW - timedelta(hours=6), SEED_NOW - timedelta(hours=2)
T_IN = W0 + timedelta(minutes=30)  # inside the window
T_OLD = W0 - timedelta(days=1)  # before it
COUNTS = ("records_checked", "mismatches_found", "missing_in_mongo", "field_mismatches",
          "orphans_in_mongo", "repaired", "repair_failed", "outbox_attempted", "outbox_sent",
          "outbox_failed", "outbox_dead")


def write_mapping(tmp_path: Path, entities: str, *, delete_orphans: bool = False) -> Path:
    path = tmp_path / f"mapping_{delete_orphans}.yaml"
    path.write_text(f"settings: {{delete_orphans: {str(delete_orphans).lower()}}}\n"
                    "entities:\n" + textwrap.indent(textwrap.dedent(entities), "  "))
    return path


def run(pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], mapping: Path,
        **options: Any) -> dict[str, int]:
    """One run of the job; the counts of its report row."""
    if not options.get("full_scan"):
        options = {"window_start": W0, "window_end": W1, **options}
    result = run_job(pg_url, mongo_db, mapping_path=mapping, **options)
    assert result.success
    [row] = reports.recent_reports(pg_engine, 1)
    return {name: row[name] for name in COUNTS}


def counts(**given: int) -> dict[str, int]:
    return {name: given.get(name, 0) for name in COUNTS}


def ids(db: Database[Any], collection: str) -> list[Any]:
    return sorted(d["_id"] for d in db[collection].find({}, {"_id": 1}))


def raw_documents(db: Database[Any], collection: str, query: dict[str, Any]) -> list[bytes]:
    handle = db.get_collection(collection, CodecOptions(document_class=RawBSONDocument))
    return [bytes(d.raw) for d in handle.find(query, sort=[("_id", 1)])]


def outbox_statuses(engine: sa.Engine) -> list[tuple[str, str, int, str | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(  # type: ignore[misc]
            "select aggregate_id, status, attempts, last_error from outbox_messages"
            " order by id"))]


# --- soft deletes ------------------------------------------------------------------------

ACCOUNTS = """\
accounts:
  source:
    table: accounts
    key: id
    updated_at: updated_at
    where: {deleted_at: {is_null: true}}
  target: {collection: accounts}
  fields: {name: name, updated_at: updated_at}
"""


def create_accounts(engine: sa.Engine, rows: list[tuple[int, str, Any, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("create table accounts (id bigint primary key, name text, "
                             "deleted_at timestamptz, updated_at timestamptz)"))
        if rows:
            conn.execute(sa.text("insert into accounts values (:i, :n, :d, :u)"),
                         [{"i": i, "n": n, "d": d, "u": u} for i, n, d, u in rows])


def account(key: int, name: str, updated: Any) -> dict[str, Any]:
    return {"_id": key, "name": name, "updated_at": updated}


@pytest.mark.parametrize("padding", [0, 40], ids=["scan", "lookup"])
def test_a_soft_deleted_row_is_never_missing_and_its_document_is_an_orphan(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path, padding: int
) -> None:
    # 1, 2 right; 3 drifted; 4 missing; 5 soft-deleted in the window, its document older
    # than the window; 6 soft-deleted, no document; document 9 has no row at all.
    # `padding` right rows long before the window make it sparse (the look-up path).
    old = [(100 + i, f"p{i}", None, T_OLD - timedelta(minutes=i)) for i in range(padding)]
    create_accounts(pg_engine, [
        (1, "a1", None, T_IN), (2, "a2", None, T_IN), (3, "a3", None, T_IN),
        (4, "a4", None, T_IN), (5, "a5", T_IN, T_IN), (6, "a6", T_IN, T_IN), *old])
    mongo_db.accounts.insert_many([
        account(1, "a1", T_IN), account(2, "a2", T_IN), account(3, "wrong", T_IN),
        account(5, "a5", T_OLD), account(9, "ghost", T_IN),
        *(account(k, n, u) for k, n, _, u in old)])

    windowed = run(pg_url, pg_engine, mongo_db, write_mapping(tmp_path, ACCOUNTS))
    assert windowed == counts(records_checked=4, mismatches_found=4, missing_in_mongo=1,
                              field_mismatches=1, orphans_in_mongo=2, repaired=2)
    assert mismatch_rows(pg_engine) == [
        ("3", "field_mismatch", "repaired", None), ("4", "missing_in_mongo", "repaired", None),
        ("5", "orphan_in_mongo", "reported", None), ("9", "orphan_in_mongo", "reported", None)]
    assert mongo_db.accounts.find_one({"_id": 6}) is None  # never "repaired" back

    deleting = write_mapping(tmp_path, ACCOUNTS, delete_orphans=True)
    full = run(pg_url, pg_engine, mongo_db, deleting, full_scan=True)
    assert full == counts(records_checked=4 + padding, mismatches_found=2, orphans_in_mongo=2,
                          repaired=2)
    assert mismatch_rows(pg_engine) == [
        ("5", "orphan_in_mongo", "repaired", None), ("9", "orphan_in_mongo", "repaired", None)]
    assert ids(mongo_db, "accounts") == [1, 2, 3, 4, *(k for k, *_ in old)]

    again = run(pg_url, pg_engine, mongo_db, deleting, full_scan=True)
    assert again == counts(records_checked=4 + padding)
    assert ids(mongo_db, "accounts") == [1, 2, 3, 4, *(k for k, *_ in old)]


def test_an_outbox_upsert_of_a_soft_deleted_row_deletes_its_document(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    # 1 soft-deleted (its document still there), 2 live, 3 soft-deleted (no document),
    # 4 live, but its message leaves out the scope column.
    create_accounts(pg_engine, [(1, "a1", T_IN, T_IN), (2, "a2", None, T_IN),
                                (3, "a3", T_IN, T_IN), (4, "a4", None, T_IN)])
    mongo_db.accounts.insert_one({**account(1, "a1", T_OLD), "_recon_version": T_OLD})
    at, gone = T_IN.isoformat(), T_IN.isoformat()
    add_outbox(pg_engine, [
        ("accounts", 1, {"id": 1, "name": "a1", "deleted_at": gone, "updated_at": at}),
        ("accounts", 2, {"id": 2, "name": "a2", "deleted_at": None, "updated_at": at}),
        ("accounts", 3, {"id": 3, "name": "a3", "deleted_at": gone, "updated_at": at}),
        ("accounts", 4, {"id": 4, "name": "a4", "updated_at": at})])

    row = run(pg_url, pg_engine, mongo_db, write_mapping(tmp_path, ACCOUNTS))
    assert row == counts(records_checked=2, mismatches_found=1, missing_in_mongo=1,
                         repaired=1, outbox_attempted=4, outbox_sent=3, outbox_dead=1)
    assert outbox_statuses(pg_engine) == [
        ("1", "sent", 0, None), ("2", "sent", 0, None), ("3", "sent", 0, None),
        ("4", "dead", 1, "invalid payload: column 'deleted_at' missing")]
    assert mongo_db.accounts.find_one({"_id": 2}) == {**account(2, "a2", T_IN),
                                                      "_recon_version": T_IN}
    assert ids(mongo_db, "accounts") == [2, 4]  # 1 deleted, 3 never created


TICKETS = """\
tickets:
  source: {table: tickets, key: id, updated_at: updated_at}
  target: {collection: tickets}
  fields: {subject: subject, updated_at: updated_at}
ticket_notes:
  source:
    table: ticket_notes
    key: id
    updated_at: updated_at
    where: {deleted_at: {is_null: true}}
  target:
    collection: tickets
    embedded: {array: notes, parent_key: ticket_id, element_key: note_id}
  fields: {body: body, updated_at: updated_at}
"""


def test_source_where_on_an_embedded_entity_scopes_its_element_rows(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table tickets (id bigint primary key, subject text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("create table ticket_notes (id bigint primary key, ticket_id "
                             "bigint, body text, deleted_at timestamptz, updated_at "
                             "timestamptz)"))
        conn.execute(sa.text("insert into tickets values (1, 'help', :u)"), {"u": T_IN})
        # 10 live; 11 soft-deleted (its element older than the window); 12 soft-deleted,
        # no element; 13 live, no element
        conn.execute(sa.text("insert into ticket_notes values (:i, 1, :b, :d, :u)"), [
            {"i": 10, "b": "n10", "d": None, "u": T_IN},
            {"i": 11, "b": "n11", "d": T_IN, "u": T_IN},
            {"i": 12, "b": "n12", "d": T_IN, "u": T_IN},
            {"i": 13, "b": "n13", "d": None, "u": T_IN}])
    mongo_db.tickets.insert_one({"_id": 1, "subject": "help", "updated_at": T_IN, "notes": [
        {"note_id": 10, "body": "n10", "updated_at": T_IN},
        {"note_id": 11, "body": "n11", "updated_at": T_OLD}]})
    mapping = write_mapping(tmp_path, TICKETS, delete_orphans=True)

    assert run(pg_url, pg_engine, mongo_db, mapping) == counts(
        records_checked=3, mismatches_found=2, missing_in_mongo=1, orphans_in_mongo=1,
        repaired=2)
    assert mismatch_rows(pg_engine) == [("11", "orphan_in_mongo", "repaired", None),
                                        ("13", "missing_in_mongo", "repaired", None)]
    [ticket] = mongo_db.tickets.find()
    assert [n["note_id"] for n in ticket["notes"]] == [10, 13]
    assert run(pg_url, pg_engine, mongo_db, mapping) == counts(records_checked=3)


# --- a tenant column ----------------------------------------------------------------------

ODD_TENANT = "o'brien\"; drop table orders; --"  # bound, never pasted into SQL
ORDERS = """\
orders:
  source: {{table: orders, key: id, updated_at: updated_at, where: {where}}}
  target: {{collection: orders}}
  fields: {{total: total, updated_at: updated_at}}
"""


@pytest.mark.parametrize(
    ("where", "checked", "missing", "orphans", "left"),
    [
        ("{tenant_id: {in: [acme, globex, " + json.dumps(ODD_TENANT) + "]}}",
         4, 0, 1, [1, 2, 3, 4]),
        # A NULL tenant is not in the list: row 6 is in scope
        ("{tenant_id: {not_in: [initech]}}", 5, 1, 1, [1, 2, 3, 4, 6]),
        ("{tenant_id: acme}", 2, 0, 3, [1, 2]),
        ("{tenant_id: acme, total: {not_in: [20]}}", 1, 0, 4, [1]),
    ],
    ids=["in", "not_in", "equals", "and"],
)
def test_a_tenant_scope_judges_its_tenants_rows_only(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path, where: str,
    checked: int, missing: int, orphans: int, left: list[int]
) -> None:
    tenants = {1: "acme", 2: "acme", 3: "globex", 4: ODD_TENANT, 5: "initech", 6: None,
               7: "initech"}
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table orders (id bigint primary key, tenant_id text, "
                             "total numeric(12,2), updated_at timestamptz)"))
        conn.execute(sa.text("insert into orders values (:i, :t, :v, :u)"),
                     [{"i": i, "t": t, "v": 10 * i, "u": T_IN} for i, t in tenants.items()])
    mongo_db.orders.insert_many([{"_id": i, "total": 10 * i, "updated_at": T_IN}
                                 for i in (1, 2, 3, 4, 5)])
    mapping = write_mapping(tmp_path, ORDERS.format(where=where), delete_orphans=True)

    row = run(pg_url, pg_engine, mongo_db, mapping, full_scan=True)
    assert row == counts(records_checked=checked, mismatches_found=missing + orphans,
                         missing_in_mongo=missing, orphans_in_mongo=orphans,
                         repaired=missing + orphans)
    assert ids(mongo_db, "orders") == left
    assert run(pg_url, pg_engine, mongo_db, mapping, full_scan=True) == counts(
        records_checked=checked)
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from orders")).scalar_one() == 7


# --- a collection of two document types --------------------------------------------------

CUSTOMERS = """\
customers:
  source: {table: customers, key: id, updated_at: updated_at}
  target: {collection: people, where: {type: client}}
  fields: {name: name, updated_at: updated_at}
"""


def test_documents_of_another_type_are_never_read_compared_or_touched(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table customers (id text primary key, name text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("insert into customers values (:i, :n, :u)"),
                     [{"i": f"c{i}", "n": f"Client {i}", "u": T_IN} for i in range(1, 6)])
    client = {"type": "client", "updated_at": T_IN}
    mongo_db.people.insert_many([
        {"_id": "c1", "name": "Client 1", **client},
        {"_id": "c2", "name": "Client two", **client},  # drifted
        {"_id": "c9", "name": "Client 9", **client},  # no row: an orphan
        # Another type and an untyped document, one holding a client's key (c3)
        {"_id": "c3", "type": "lead", "name": "Lead 3", "score": 5, "updated_at": T_OLD},
        {"_id": "l1", "type": "lead", "name": "Lead 1", "updated_at": T_IN},
        {"_id": "x1", "name": "Client 1", "updated_at": T_IN}])
    others = {"type": {"$ne": "client"}}
    before = raw_documents(mongo_db, "people", others)
    at = T_IN.isoformat()
    add_outbox(pg_engine, [
        ("customers", "c5", {"id": "c5", "name": "Client 5", "updated_at": at}),
        ("customers", "c3", {"id": "c3", "name": "Client 3", "updated_at": at})])
    with pg_engine.begin() as conn:  # a delete naming a lead's key deletes nothing
        conn.execute(sa.text("insert into outbox_messages (aggregate_type, aggregate_id, "
                             "operation, payload) values ('customers', 'l1', 'delete', '{}')"))
    mapping = write_mapping(tmp_path, CUSTOMERS, delete_orphans=True)

    row = run(pg_url, pg_engine, mongo_db, mapping, full_scan=True)
    assert row == counts(records_checked=5, mismatches_found=4, missing_in_mongo=2,
                         field_mismatches=1, orphans_in_mongo=1, repaired=3, repair_failed=1,
                         outbox_attempted=3, outbox_sent=2, outbox_failed=1)
    collision = out_of_scope_error(load_mapping(mapping, pg_engine).entity("customers"))
    assert mismatch_rows(pg_engine) == [
        ("c2", "field_mismatch", "repaired", None),
        ("c3", "missing_in_mongo", "failed", collision),
        ("c4", "missing_in_mongo", "repaired", None),
        ("c9", "orphan_in_mongo", "repaired", None)]
    assert outbox_statuses(pg_engine) == [("c5", "sent", 0, None),
                                          ("c3", "failed", 1, collision),
                                          ("l1", "sent", 0, None)]
    assert raw_documents(mongo_db, "people", others) == before  # byte for byte
    for key in ("c4", "c5"):  # created in scope
        assert mongo_db.people.find_one({"_id": key}) == {
            "_id": key, "name": f"Client {key[1]}", "updated_at": T_IN,
            "_recon_version": T_IN, "type": "client"}
    assert ids(mongo_db, "people") == ["c1", "c2", "c3", "c4", "c5", "l1", "x1"]

    again = run(pg_url, pg_engine, mongo_db, mapping, full_scan=True)
    # (the failed message waits for its backoff)
    assert again == counts(records_checked=5, mismatches_found=1, missing_in_mongo=1,
                           repair_failed=1)
    assert raw_documents(mongo_db, "people", others) == before


def test_a_document_created_under_an_in_scope_gets_its_first_value(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table customers (id text primary key, name text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("insert into customers values ('c1', 'One', :u), "
                             "('c2', 'Two', :u)"), {"u": T_IN})
    mongo_db.people.insert_many([
        {"_id": "c1", "name": "One", "kind": {"of": "customer"}, "updated_at": T_IN},
        {"_id": "p1", "name": "Other", "kind": {"of": "partner"}, "updated_at": T_IN}])
    mapping = write_mapping(tmp_path, CUSTOMERS.replace(
        "where: {type: client}", "where: {kind.of: {in: [client, customer]}}"))

    assert run(pg_url, pg_engine, mongo_db, mapping, full_scan=True) == counts(
        records_checked=2, mismatches_found=1, missing_in_mongo=1, repaired=1)
    assert mongo_db.people.find_one({"_id": "c2"}) == {
        "_id": "c2", "name": "Two", "updated_at": T_IN, "_recon_version": T_IN,
        "kind": {"of": "client"}}
    assert run(pg_url, pg_engine, mongo_db, mapping, full_scan=True) == counts(
        records_checked=2)


def test_a_natural_key_need_only_be_unique_within_the_scope(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """Leads and clients share `ref` values: no unique index over the whole collection is
    possible, and none is needed: `db init` creates one over the target scope."""
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table customers (id text primary key, name text, "
                             "updated_at timestamptz)"))
        conn.execute(sa.text("insert into customers values (:i, :n, :u)"),
                     [{"i": f"r{i}", "n": f"Client {i}", "u": T_IN} for i in (1, 2, 3)])
    mongo_db.people.insert_many([
        {"ref": "r1", "type": "client", "name": "Client 1", "updated_at": T_IN},
        {"ref": "r1", "type": "lead", "name": "Lead 1", "updated_at": T_IN},
        {"ref": "r3", "type": "lead", "name": "Lead 3", "updated_at": T_IN}])
    leads = raw_documents(mongo_db, "people", {"type": "lead"})
    mapping = write_mapping(tmp_path, CUSTOMERS.replace(
        "{collection: people,", "{collection: people, key: ref,"), delete_orphans=True)
    config = load_mapping(mapping, pg_engine)

    assert ensure_target_indexes(mongo_db, config.entities) == [
        "people.ref_1_customers_scope", "people.updated_at_1"]
    assert run(pg_url, pg_engine, mongo_db, mapping, full_scan=True) == counts(
        records_checked=3, mismatches_found=2, missing_in_mongo=2, repaired=2)
    assert raw_documents(mongo_db, "people", {"type": "lead"}) == leads
    assert sorted((d["ref"], d["type"]) for d in mongo_db.people.find()) == [
        ("r1", "client"), ("r1", "lead"), ("r2", "client"), ("r3", "client"), ("r3", "lead")]
    assert run(pg_url, pg_engine, mongo_db, mapping, full_scan=True) == counts(
        records_checked=3)


# --- one verdict in SQL and in Python --------------------------------------------------

@pytest.mark.parametrize("where", [
    "{tenant: acme}", "{tenant: {in: [acme, globex]}}", "{tenant: {not_in: [acme]}}",
    "{tenant: {is_null: true}}", "{tenant: {is_null: false}}", "{n: 2}",
    "{n: {not_in: [1, '3']}}", "{at: {is_null: true}, n: {in: [1, 2, 4]}}",
    "{at: '2026-01-01T00:00:00+00:00'}", "{flag: true}", "{flag: {not_in: [false]}}",
])
def test_the_outbox_judges_scope_exactly_as_the_queries_do(
    pg_engine: sa.Engine, tmp_path: Path, where: str
) -> None:
    """`SourceCondition.admits` (outbox payloads) and the SQL clauses (every query) agree
    on every row, NULLs included."""
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table things (id bigint primary key, tenant text, n int, "
                             "at timestamptz, flag boolean, updated_at timestamptz)"))
        conn.execute(sa.text("insert into things values (:i, :t, :n, :a, :f, now())"), [
            {"i": i, "t": t, "n": n, "a": a, "f": f} for i, (t, n, a, f) in enumerate([
                ("acme", 1, None, True), ("globex", 2, "2026-01-01T00:00:00Z", False),
                (None, 3, None, None), ("initech", None, "2026-01-01T01:00:00Z", True),
                ("acme", 2, "2026-01-01T00:00:00Z", None), (None, None, None, False),
                ("acme", 4, None, True)])])
    mapping = write_mapping(tmp_path, f"""\
        things:
          source: {{table: things, key: id, updated_at: updated_at, where: {where}}}
          target: {{collection: things}}
          fields: {{updated_at: updated_at}}
        """)
    entity = load_mapping(mapping, pg_engine).entity("things")
    with pg_engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.text("select * from things")).mappings()]
    in_python = {r["id"] for r in rows if source_scope_admits(entity.source.where, r)}
    assert set(fetch_rows(pg_engine, entity, [r["id"] for r in rows])) == in_python
    assert 0 < len(in_python) < len(rows)


# --- mapping errors ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("where: {deleted: {is_null: true}}", "",
         "source 'where': column 'deleted' not in table 'accounts'"),
        ("where: {id: {in: [7, seven]}}", "",
         "source 'where' column 'id': value 'seven' is not a valid integer"),
        ("where: {deleted_at: yesterday}", "",
         "source 'where' column 'deleted_at': value 'yesterday' is not a valid datetime"),
        ("where: {deleted_at: {is_nul: true}}", "",
         "source 'where' column 'deleted_at': unknown operator 'is_nul' (expected: is_null, "
         "in, not_in)"),
        ("where: {deleted_at: {is_null: maybe}}", "",
         "source 'where' column 'deleted_at': is_null must be true or false, not 'maybe'"),
        ("where: {name: {in: []}}", "",
         "source 'where' column 'name': in must be a non-empty list, not []"),
        ("where: {name: null}", "",
         "source 'where' column 'name': value null matches nothing: write {is_null: true}"),
        ("", "where: {type: {nin: [lead]}}",
         "target 'where' field 'type': unknown operator 'nin' (expected: in)"),
        ("", "where: {type: {in: [{a: 1}]}}",
         "target 'where' field 'type': value {'a': 1} must be a string, number, boolean or "
         "timestamp"),
        ("", "where: {name: client}",
         "target 'where' field 'name' overlaps 'name': a scope field must be one the mapping "
         "never writes"),
        ("", "where: {_id: 3}", "target 'where' field '_id' overlaps the key"),
        ("", "where: {$where: x}", "target 'where': invalid field path '$where'"),
        ("", "embedded: {array: subs, parent_key: name, element_key: id}, where: {type: x}",
         "target 'where' is not supported on an embedded entity"),
    ],
    ids=["missing-column", "bad-integer", "bad-datetime", "unknown-operator", "bad-is-null",
         "empty-in", "null-value", "unknown-target-operator", "target-object-value",
         "target-mapped-field", "target-key", "target-operator-path", "embedded-target"],
)
def test_a_bad_where_fails_at_load_naming_entity_and_name(
    pg_engine: sa.Engine, tmp_path: Path, source: str, target: str, message: str
) -> None:
    create_accounts(pg_engine, [])
    source, target = (f", {text}" if text else "" for text in (source, target))
    mapping = write_mapping(tmp_path, f"""\
        accounts:
          source: {{table: accounts, key: id, updated_at: updated_at{source}}}
          target: {{collection: accounts{target}}}
          fields: {{name: name, updated_at: updated_at}}
        """)
    with pytest.raises(MappingError) as raised:
        load_mapping(mapping, pg_engine)
    assert f"mapping file {mapping}: mapping entity 'accounts': {message}" in str(raised.value)
