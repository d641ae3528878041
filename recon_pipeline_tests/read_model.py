"""What the fault matrix checks both databases against.

`read_model_differences` projects every source row of the demo domain (SPEC 4.2) by
hand, independently of the engine's projection, and compares it with what MongoDB holds:
a converged run leaves no difference but the orphans it only reports. `dump_postgres` and
`dump_mongodb` are whole-database images for comparing an interrupted run with an
uninterrupted one on identical seed data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from bson.decimal128 import Decimal128
from pymongo.database import Database

from recon_pipeline.local.demo_data import SeedSummary


def instant(value: Any) -> Any:
    """Datetimes as MongoDB keeps them: UTC, milliseconds."""
    if not isinstance(value, datetime):
        return value
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def number(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


CLIENT_FIELDS = {"first_name": "first_name", "last_name": "last_name",
                 "email": "contact.email", "status": "status", "updated_at": "updated_at"}
DEBT_FIELDS = {"creditor_name": "creditor_name", "creditor_email": "creditor_email",
               "debt_amount": "current_debt_amount", "currency": "currency",
               "updated_at": "updated_at"}
EMAIL_FIELDS = {"client_ref": "client_ref", "from_address": "from", "subject": "subject",
                "received_at": "received_at", "processing_status": "processing_status",
                "extracted_amount": "extracted_amount", "updated_at": "updated_at"}
# (entity = collection = source table, field map); debts live inside clients.
DOCUMENT_ENTITIES = (("clients", CLIENT_FIELDS), ("incoming_emails", EMAIL_FIELDS))


def _get(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _image(source: dict[str, Any] | None, target: dict[str, Any] | None,
           fields: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mapped values of a row and of its document, normalised alike."""
    expected = {path: number(instant(source[column])) for column, path in fields.items()
                } if source else {}
    stored = {path: number(instant(_get(target, path))) for path in fields.values()
              } if target else {}
    return expected, stored


def _older(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    return bool(stored) and stored["updated_at"] is not None and (
        stored["updated_at"] < expected["updated_at"])


@dataclass(frozen=True, slots=True)
class Differences:
    wrong: list[str]  # a source row whose document/element is missing or differs
    extra: dict[str, set[Any]]  # entity -> keys held in MongoDB without a source row
    older: list[str]  # a document whose version is older than its row's

    def converged(self) -> bool:
        return not self.wrong

    @staticmethod
    def keys(found: list[str]) -> set[tuple[str, str]]:
        """(entity, record key as text) of `wrong` or `older` entries."""
        return {(entry.split(" ")[0], entry.split(" ")[1].rstrip(":")) for entry in found}


def read_model_differences(engine: sa.Engine, db: Database[dict[str, Any]]) -> Differences:
    wrong: list[str] = []
    older: list[str] = []
    extra: dict[str, set[Any]] = {}
    with engine.connect() as conn:
        rows = {table: {r[key]: dict(r) for r in conn.execute(
            sa.text(f"select * from {table}")).mappings()}
            for table, key in (("clients", "client_ref"), ("incoming_emails", "id"),
                               ("creditor_debts", "id"))}
    documents = {name: {d["_id"]: d for d in db[name].find()}
                 for name in ("clients", "incoming_emails")}
    for table, fields in DOCUMENT_ENTITIES:
        entity = table
        stored_docs = documents[table]
        for record_key, row in rows[table].items():
            expected, stored = _image(row, stored_docs.get(record_key), fields)
            if expected != stored:
                wrong.append(f"{entity} {record_key}: expected {expected}, stored {stored}")
                if _older(stored, expected):
                    older.append(f"{entity} {record_key}")
        extra[entity] = set(stored_docs) - set(rows[table])
    elements = {(doc["_id"], element.get("creditor_id")): element
                for doc in documents["clients"].values()
                for element in doc.get("final_creditor_list") or []}
    for debt_id, row in rows["creditor_debts"].items():
        slot = (row["client_ref"], debt_id)
        expected, stored = _image(row, elements.get(slot), DEBT_FIELDS)
        if expected != stored:
            wrong.append(f"creditor_debts {debt_id}: expected {expected}, stored {stored}")
            if _older(stored, expected):
                older.append(f"creditor_debts {debt_id}")
    extra["creditor_debts"] = {element_key for (parent, element_key) in elements
                               if (parent, element_key) not in
                               {(r["client_ref"], k) for k, r in rows["creditor_debts"].items()}}
    return Differences(wrong, extra, older)


def seeded_orphans(summary: SeedSummary) -> dict[str, set[Any]]:
    return {name: set(drift.orphans) for name, drift in summary.drift.items()}


def assert_converged(engine: sa.Engine, db: Database[dict[str, Any]],
                     summary: SeedSummary) -> None:
    """MongoDB equals the projection of every source row; the only other documents and
    elements are the seeded orphans (reported, never deleted by default)."""
    found = read_model_differences(engine, db)
    assert found.wrong == []
    assert found.extra == seeded_orphans(summary)


# --- whole-database images ----------------------------------------------------------------

SOURCE_TABLES = ("clients", "creditor_debts", "incoming_emails")


def mismatch_rows(engine: sa.Engine) -> list[tuple[str, str, str, str | None]]:
    """(record key, kind, repair status, repair error) of the latest report's mismatches."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(  # type: ignore[misc]
            "select record_key, kind, repair_status, repair_error from reconciliation_mismatches"
            " where report_id = (select max(id) from reconciliation_reports)"
            " order by record_key, kind"))]


def dump_postgres(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every source row, outbox message and idempotency key. Only the moment a run marked
    a row synced is left out (a clock reading, not data): whether it is set is kept."""
    image: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in SOURCE_TABLES:
            rows = conn.execute(sa.text(f"select * from {table} order by 1")).mappings()
            image[table] = [tuple((k, v is not None) if k == "mongo_synced_at" else (k, v)
                                  for k, v in row.items()) for row in rows]
        image["outbox_messages"] = [tuple(r) for r in conn.execute(sa.text(
            "select id, aggregate_type, aggregate_id, operation, payload::text, status, "
            "attempts, last_error from outbox_messages order by id"))]
        image["idempotency_keys"] = [tuple(r) for r in conn.execute(sa.text(
            "select key, scope, response::text, expires_at from idempotency_keys order by key"))]
    return image


def dump_mongodb(db: Database[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection, embedded arrays in element-key order (an
    interrupted repair may push the same elements in another order)."""
    image: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(db.list_collection_names()):
        documents = []
        for document in db[name].find().sort("_id", 1):
            if isinstance(document.get("final_creditor_list"), list):
                document["final_creditor_list"] = sorted(
                    document["final_creditor_list"], key=lambda e: str(e.get("creditor_id")))
            documents.append(document)
        image[name] = documents
    return image


# --- secrets --------------------------------------------------------------------------------

SECRET = "s3cret-pw"  # a password the servers ignore (trust auth): any leak of it shows


def with_secret(pg_url: str) -> str:
    return sa.make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)


def leaked_secrets(engine: sa.Engine, db: Database[dict[str, Any]], *texts: str) -> int:
    """Occurrences of SECRET in what runs leave behind: report details, mismatch and
    outbox errors, MongoDB documents, and the given texts (errors, output)."""
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "select coalesce(string_agg(details::text, ' '), '') from reconciliation_reports"
            " union all select coalesce(string_agg(concat(fields::text, repair_error), ' '),"
            " '') from reconciliation_mismatches union all select coalesce(string_agg("
            "last_error, ' '), '') from outbox_messages")).scalars().all()
    return sum(text.count(SECRET) for text in
               [*stored, str(dump_mongodb(db)), *texts])
