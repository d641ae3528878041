"""`diff_sorted`, the full scan's diff, fed from memory: its verdicts are exactly `judge`'s
on the pairs a key lookup would make, whatever the shortcuts it takes on the way."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import bson
from bson.objectid import ObjectId

from recon_pipeline.engine.diff import Mismatch, ScanTally, diff_sorted, judge, merge_key
from recon_pipeline.engine.projection import nest, projected_fields, row_version
from recon_pipeline.engine.window import RunWindow
from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import EntityMapping, bind_mapping, read_mapping_file
from recon_pipeline.model.normalize import key_of, order_key
from recon_pipeline.stores.schema import metadata
from recon_pipeline.stores.source import row_columns
from recon_pipeline.stores.target import VERSION_FIELD, TargetRecord, records_of

END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
WINDOW = RunWindow(END - dt.timedelta(days=30), END, full_scan=True)
OPTIONS = bson.CodecOptions(tz_aware=True)


def entity(name: str) -> EntityMapping:
    catalog = {t.name: {c.name: c.type for c in t.columns} for t in metadata.tables.values()}
    return bind_mapping(read_mapping_file(packaged_mapping_path()), catalog).entity(name)


def email(i: int) -> dict[str, Any]:
    stamp = END - dt.timedelta(hours=1, seconds=i, microseconds=i * 7919 % 1_000_000)
    return {"id": i, "client_ref": f"C{i:04d}", "from_address": f"n{i}@x.example",
            "subject": f"Statement {i}", "received_at": stamp,
            "processing_status": "new", "extracted_amount":
                None if i % 4 == 0 else Decimal(i) / 100, "updated_at": stamp}


def debt(i: int, parent: str) -> dict[str, Any]:
    stamp = END - dt.timedelta(hours=2, microseconds=i * 31)
    return {"id": i, "client_ref": parent, "creditor_name": f"Bank {i}",
            "creditor_email": None if i % 3 else f"b{i}@x.example",
            "debt_amount": Decimal(i * 7) / 100, "currency": "EUR", "updated_at": stamp}


def document(target: EntityMapping, row: dict[str, Any]) -> dict[str, Any]:
    return {"_id": row[target.source.key], **nest(projected_fields(target, row)),
            VERSION_FIELD: row_version(target, row)}


def driven(document_: dict[str, Any]) -> dict[str, Any]:
    return bson.decode(bson.encode(document_), OPTIONS)


def reference(target: EntityMapping, rows: list[dict[str, Any]],
              documents: list[dict[str, Any]], window: RunWindow) -> list[Any]:
    """Pair by merge key, judge each pair: the verdicts, in merge order."""
    records = {merge_key(target, r.key, r.parent): r
               for d in documents for r in records_of(target, d)}
    verdicts: list[Any] = []
    for row in rows:
        parent = row[target.target.embedded.parent_key] if target.target.embedded else None
        record = records.pop(merge_key(target, row[target.source.key], parent), None)
        if window.contains(row[target.source.updated_at]):
            verdicts.append(judge(target, row, record))
    verdicts += list(records.values())
    return [v for v in verdicts if v is not None]


def run(target: EntityMapping, rows: list[dict[str, Any]], documents: list[dict[str, Any]],
        window: RunWindow = WINDOW, batch: int = 3) -> tuple[list[Any], int]:
    columns = row_columns(target)
    tuples = [tuple(r[c] for c in columns) for r in rows]
    tally = ScanTally()
    found = list(diff_sorted(target, (tuples[i:i + batch] for i in range(0, len(tuples), batch)),
                             (documents[i:i + batch] for i in range(0, len(documents), batch)),
                             window, tally))
    return found, tally.checked


def as_set(items: list[Any]) -> set[Any]:
    def key(item: Any) -> Any:
        if isinstance(item, Mismatch):
            return (item.kind, repr(item.key), repr(item.parent), repr(item.fields))
        assert isinstance(item, TargetRecord)
        return ("record", repr(item.key), repr(item.parent), repr(item.values))
    return {key(i) for i in items}


def test_documents_agree_differ_are_missing_orphans_and_strays() -> None:
    target = entity("incoming_emails")
    rows = [email(i) for i in range(1, 40)]
    documents = [driven(document(target, r)) for r in rows]
    documents[2]["subject"] = "changed"
    documents[5]["extracted_amount"] = bson.Decimal128("1.5")
    documents[6]["received_at"] = documents[6]["received_at"] + dt.timedelta(milliseconds=1)
    del documents[7]["client_ref"]
    documents[8]["extracted_amount"] = 0.09 if rows[8]["extracted_amount"] else 0.0
    del documents[10]  # missing
    rows.insert(0, email(0))  # missing too, at the start
    rows[20]["updated_at"] = END + dt.timedelta(seconds=5)  # settling: not judged
    documents[20]["subject"] = "changed while settling"
    documents += [driven({"_id": "stray", "subject": "x"}),
                  driven({"_id": ObjectId(), "subject": "y"}),
                  driven({"_id": 10**6, "subject": "orphan"}),
                  driven({"_id": 2.5, "subject": "a double between 2 and 3"})]
    documents.sort(key=lambda d: order_key(key_of(d["_id"], target.key_kind)))
    found, checked = run(target, rows, documents)
    expected = reference(target, rows, documents, WINDOW)
    assert as_set(found) == as_set(expected)
    assert len(found) == len(expected) >= 8
    assert checked == len(rows) - 1


def test_a_window_judges_only_its_rows() -> None:
    target = entity("incoming_emails")
    rows = [email(i) for i in range(1, 30)]
    documents = [driven(document(target, r)) for r in rows]
    for d in documents:
        d["subject"] = "everything differs"
    window = RunWindow(END - dt.timedelta(hours=1, seconds=10), END)
    found, checked = run(target, rows, documents, window)
    assert as_set(found) == as_set(reference(target, rows, documents, window))
    assert checked == sum(window.contains(r["updated_at"]) for r in rows)
    assert 0 < checked < len(rows)


def test_embedded_elements_in_any_array_order() -> None:
    target = entity("creditor_debts")
    parents = ["A", "B", "C", "D"]
    rows = [debt(i, p) for n, p in enumerate(parents) for i in range(10 - n * 2, 14 - n * 2)]
    rows.sort(key=lambda r: (r["client_ref"], r["id"]))
    documents = []
    for parent in parents:
        elements = [{**nest(projected_fields(target, r)), "creditor_id": r["id"]}
                    for r in rows if r["client_ref"] == parent]
        documents.append(driven({"_id": parent, "final_creditor_list": elements[::-1]}))
    documents[1]["final_creditor_list"][0]["currency"] = "USD"
    documents[2]["final_creditor_list"].pop()
    documents[3]["final_creditor_list"].append({"creditor_id": "stray-key", "currency": "EUR"})
    documents[3]["final_creditor_list"].append({"creditor_id": 99, "currency": "EUR"})
    documents.insert(0, driven({"_id": "0-no-array"}))
    found, checked = run(target, rows, documents, batch=2)
    expected = reference(target, rows, documents, WINDOW)
    assert as_set(found) == as_set(expected)
    assert len(found) == 4
    assert checked == len(rows)
