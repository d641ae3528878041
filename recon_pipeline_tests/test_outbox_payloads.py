"""Generated outbox payloads (issue 10's fault matrix): well-formed upserts and deletes of
every demo entity with arbitrary values, and malformed messages of every kind SPEC 6
names. Each message ends `sent` or `dead` with `invalid payload: ...`; none stops a run;
MongoDB holds exactly the well-formed upserts.

`make test` tries a few hundred payloads; the soak case (`-m soak`) tries 10 000. A NUL in
a field name cannot be tried: PostgreSQL's jsonb refuses `\\u0000` before any run sees it.
"""

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pymongo.database import Database

from recon_pipeline.stores import reports
from recon_pipeline_tests.dagster_support import run_job, step_errors
from recon_pipeline_tests.read_model import leaked_secrets, with_secret

PER_RUN = 100  # messages per run (one hypothesis example)

text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
               max_size=8)
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2999, 12, 31),
                       timezones=st.just(UTC)).map(datetime.isoformat)
amounts = st.decimals(min_value=Decimal("-9999999999.99"), max_value=Decimal("9999999999.99"),
                      places=2, allow_nan=False, allow_infinity=False).map(str)


def rows(key: Callable[[], Any]) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """A source row image per entity, as an application serialises it."""
    return {
        "clients": st.fixed_dictionaries({
            "client_ref": st.builds(lambda: f"H{key()}"), "first_name": text, "last_name": text,
            "email": st.none() | text, "status": text, "updated_at": moments}),
        "creditor_debts": st.fixed_dictionaries({
            "id": st.builds(key), "client_ref": text, "creditor_name": text,
            "creditor_email": st.none() | text, "debt_amount": amounts,
            "currency": st.sampled_from(["EUR", "GBP", "USD"]), "updated_at": moments}),
        "incoming_emails": st.fixed_dictionaries({
            "id": st.builds(key), "client_ref": text, "from_address": text, "subject": text,
            "received_at": moments, "processing_status": text,
            "extracted_amount": st.none() | amounts, "updated_at": moments}),
    }


KEYS = {"clients": "client_ref", "creditor_debts": "id", "incoming_emails": "id"}
# Values no column of that type can hold.
BAD_VALUES = {"updated_at": "yesterday-ish", "debt_amount": "twelve", "id": "not-a-number",
              "extracted_amount": "1e999999999"}


@dataclass(frozen=True)
class Message:
    aggregate_type: str
    operation: str
    payload: Any
    well_formed: bool

    @property
    def key(self) -> Any:
        return self.payload[KEYS[self.aggregate_type]] if self.well_formed else None


@st.composite
def messages(draw: st.DrawFn, key: Callable[[], Any]) -> Message:
    entity = draw(st.sampled_from(sorted(KEYS)))
    row = draw(rows(key)[entity])
    kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "delete", "unknown_type",
                                 "bad_operation", "not_an_object", "key_missing",
                                 "bad_value", "dollar_field"]))
    if kind in ("upsert", "delete"):
        payload = row if kind == "upsert" else {KEYS[entity]: row[KEYS[entity]]}
        return Message(entity, kind, payload, True)
    if kind == "unknown_type":
        return Message("invoices", "upsert", row, False)
    if kind == "bad_operation":
        return Message(entity, draw(st.sampled_from(["merge", "UPSERT", ""])), row, False)
    if kind == "not_an_object":
        return Message(entity, "upsert", draw(st.sampled_from(
            [[1, 2], "row", 7, None, True])), False)
    if kind == "key_missing":
        return Message(entity, "upsert", {k: v for k, v in row.items()
                                          if k != KEYS[entity]}, False)
    if kind == "bad_value":
        column = draw(st.sampled_from([c for c in BAD_VALUES if c in row]))
        return Message(entity, "upsert", {**row, column: BAD_VALUES[column]}, False)
    return Message(entity, "upsert", {**row, draw(st.sampled_from(
        ["$set", "$where", "$"])): "x"}, False)


def unique_keys() -> Iterator[int]:
    return itertools.count(10_000_000)


def deliver_generated(pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
                      batch: list[Message]) -> None:
    ids: list[int] = []
    with pg_engine.begin() as conn:
        for message in batch:
            ids.append(conn.execute(sa.text(
                "insert into outbox_messages (aggregate_type, aggregate_id, operation, payload)"
                " values (:t, :k, :o, cast(:p as jsonb)) returning id"),
                {"t": message.aggregate_type, "k": str(message.key), "o": message.operation,
                 "p": _json(message.payload)}).scalar_one())
    result = run_job(with_secret(pg_url), mongo_db)
    assert result.success, step_errors(result)
    with pg_engine.connect() as conn:
        outcomes = {r.id: (r.status, r.last_error) for r in conn.execute(sa.text(
            "select id, status, last_error from outbox_messages where id = any(:ids)"),
            {"ids": ids})}
    [report] = reports.recent_reports(pg_engine, 1)
    malformed = sum(not m.well_formed for m in batch)
    assert (report["outbox_attempted"], report["outbox_sent"], report["outbox_dead"]) == (
        len(batch), len(batch) - malformed, malformed)
    assert report["status"] == ("needs_attention" if malformed else "success")
    for message_id, message in zip(ids, batch, strict=True):
        status, error = outcomes[message_id]
        if message.well_formed:
            assert status == "sent", (message, error)
        else:
            assert status == "dead" and error.startswith("invalid payload:"), (message, error)
    upserted = {(m.aggregate_type, m.key) for m in batch
                if m.well_formed and m.operation == "upsert"}
    for entity, key in upserted:
        if entity == "creditor_debts":
            assert mongo_db.clients.count_documents(
                {"final_creditor_list.creditor_id": key}) == 1, key
        else:
            assert mongo_db[entity].count_documents({"_id": key}) == 1, (entity, key)
    with pg_engine.connect() as conn:
        totals: dict[str, int] = dict(conn.execute(sa.text(
            "select status, count(*) from outbox_messages group by status")).all())
    leaks = leaked_secrets(pg_engine, mongo_db, *step_errors(result))
    print(f"\nMATRIX generated-payloads: runs_so_far={len(reports.recent_reports(pg_engine, 1000))}"
          f" payloads_so_far={sum(totals.values())} outcomes={totals} lost=0 crashed_runs=0"
          f" leaked_secrets={leaks}")
    assert leaks == 0


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def generated_payloads_case(examples: int) -> Callable[..., None]:
    keys = unique_keys()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(messages(lambda: next(keys)), min_size=PER_RUN, max_size=PER_RUN))
    def case(pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
             batch: list[Message]) -> None:
        deliver_generated(pg_url, pg_engine, mongo_db, batch)

    return case


test_generated_payloads_end_sent_or_dead_with_a_reason = generated_payloads_case(2)
test_ten_thousand_generated_payloads_end_sent_or_dead_with_a_reason = pytest.mark.soak(
    generated_payloads_case(100))
