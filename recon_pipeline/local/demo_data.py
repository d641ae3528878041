"""Demo data for the packaged mapping, with deliberate drift of every kind the pipeline
finds and repairs: missing, mismatched and orphan documents and array elements, failed and
malformed outbox messages, expired idempotency keys. The same seed gives the same data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pymongo.database import Database

from recon_pipeline.engine.projection import Presence, upsert_ops
from recon_pipeline.model.mapping import EntityMapping, ReconConfig
from recon_pipeline.stores import schema
from recon_pipeline.stores.target import ensure_target_indexes

DEMO_TABLES = (schema.incoming_emails, schema.creditor_debts, schema.clients)
STATUSES = ("active", "onboarding", "closed")
CREDITORS = ("Acme Bank", "Northwind Credit", "Globex Finance", "Initech Loans", "Umbrella Card")
FIRST = ("Ada", "Grace", "Linus", "Barbara", "Edsger", "Margaret", "Alan", "Frances", "Ken")
LAST = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Dijkstra", "Hamilton", "Turing", "Allen")


@dataclass(slots=True)
class EntityDrift:
    rows: int = 0
    missing: list[Any] = field(default_factory=list)
    mismatched: list[Any] = field(default_factory=list)
    orphans: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class SeedSummary:
    now: datetime
    drift: dict[str, EntityDrift]
    outbox: dict[str, int]
    idempotency_keys_expired: int
    idempotency_keys_live: int


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def row_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON row image an application writes into `outbox_messages.payload`."""
    return {column: _json_value(value) for column, value in row.items()}


@dataclass(slots=True)
class _Generator:
    rng: random.Random
    now: datetime

    def moment(self) -> datetime:
        """A settled moment within the last 40 hours, with microseconds (PostgreSQL keeps
        them, MongoDB does not: representation only, never a mismatch)."""
        return self.now - timedelta(seconds=self.rng.uniform(600, 40 * 3600))

    def client(self, i: int) -> dict[str, Any]:
        first, last = self.rng.choice(FIRST), self.rng.choice(LAST)
        return {"client_ref": f"C{i:06d}", "first_name": first, "last_name": last,
                "email": f"{first.lower()}.{last.lower()}{i}@example.com",
                "status": self.rng.choice(STATUSES), "created_at": self.moment(),
                "updated_at": self.moment()}

    def debt(self, debt_id: int, client_ref: str) -> dict[str, Any]:
        name = self.rng.choice(CREDITORS)
        return {"id": debt_id, "client_ref": client_ref, "creditor_name": name,
                "creditor_email": f"collections@{name.split()[0].lower()}.example",
                "debt_amount": Decimal(self.rng.randint(1000, 5_000_000)) / 100,
                "currency": self.rng.choice(("EUR", "GBP", "USD")), "updated_at": self.moment()}

    def email(self, email_id: int, client_ref: str) -> dict[str, Any]:
        amount = Decimal(self.rng.randint(100, 900_000)) / 100 if self.rng.random() < 0.7 else None
        return {"id": email_id, "client_ref": client_ref,
                "from_address": f"noreply{email_id}@creditor.example",
                "subject": f"Statement {email_id}", "received_at": self.moment(),
                "processing_status": self.rng.choice(("new", "parsed", "needs_review")),
                "extracted_amount": amount, "mongo_sync_status": "synced",
                "mongo_synced_at": self.now - timedelta(minutes=5), "mongo_sync_error": None,
                "created_at": self.moment(), "updated_at": self.moment()}


def generate_rows(clients: int, seed: int, now: datetime) -> dict[str, list[dict[str, Any]]]:
    gen = _Generator(random.Random(seed), now)
    rows: dict[str, list[dict[str, Any]]] = {"clients": [], "creditor_debts": [],
                                             "incoming_emails": []}
    for i in range(1, clients + 1):
        client = gen.client(i)
        rows["clients"].append(client)
        for _ in range(gen.rng.randint(0, 3)):
            rows["creditor_debts"].append(
                gen.debt(len(rows["creditor_debts"]) + 1, client["client_ref"]))
        rows["incoming_emails"].append(
            gen.email(len(rows["incoming_emails"]) + 1, client["client_ref"]))
    return rows


MUTATIONS = {  # column -> how drift corrupts the MongoDB copy of it
    "clients": ("status", "stale-status"),
    "creditor_debts": ("creditor_name", "Wrong Creditor Ltd"),
    "incoming_emails": ("subject", "Subject edited in MongoDB"),
}


def _choose_drift(rng: random.Random, entity: str, rows: list[dict[str, Any]], key: str,
                  rate: float, has_children: set[Any]) -> EntityDrift:
    drift = EntityDrift(rows=len(rows))
    for row in rows:
        roll = rng.random()
        if roll < rate / 2:
            # A missing client document would also lose its debts: only childless ones.
            if entity != "clients" or row[key] not in has_children:
                drift.missing.append(row[key])
        elif roll < rate:
            drift.mismatched.append(row[key])
    drift.orphans = [f"ORPHAN{i:04d}" if entity == "clients" else 900_000_000 + i
                     for i in range(max(1, round(len(rows) * rate / 4)))]
    return drift


def _mongo_ops(entity: EntityMapping, rows: list[dict[str, Any]], drift: EntityDrift,
               orphan_parent: str | None) -> list[Any]:
    ops: list[Any] = []
    presence = Presence.PARENT_ONLY if entity.target.embedded else Presence.ABSENT
    missing, mismatched = set(drift.missing), set(drift.mismatched)
    column, wrong = MUTATIONS[entity.name]
    for row in rows:
        key = row[entity.source.key]
        if key in missing:
            continue
        ops += upsert_ops(entity, {**row, column: wrong} if key in mismatched else row, presence)
    for orphan in drift.orphans if rows else ():
        fake = {**rows[0], entity.source.key: orphan}
        if entity.target.embedded:
            fake[entity.target.embedded.parent_key] = orphan_parent
        ops += upsert_ops(entity, fake, presence)
    return ops


def _outbox_rows(rng: random.Random, rows: dict[str, list[dict[str, Any]]], now: datetime,
                 drifted: set[Any]) -> list[dict[str, Any]]:
    """Failed deliveries of consistent rows (the retry makes them `sent`) and malformed ones."""
    out: list[dict[str, Any]] = []
    clean = [r for r in rows["incoming_emails"] if r["id"] not in drifted]
    for row in rng.sample(clean, min(3, len(clean))):
        out.append({"aggregate_type": "incoming_emails", "aggregate_id": str(row["id"]),
                    "operation": "upsert", "payload": row_payload(row), "status": "failed",
                    "attempts": 1, "last_error": "MongoDB write timed out",
                    "next_attempt_at": now - timedelta(minutes=30)})
    malformed = [("invoices", "upsert", {"id": 1}), ("clients", "merge", {}),
                 ("clients", "upsert", ["not", "an", "object"])]
    for aggregate_type, operation, payload in malformed:
        out.append({"aggregate_type": aggregate_type, "aggregate_id": "X1",
                    "operation": operation, "payload": payload, "status": "pending",
                    "attempts": 0, "last_error": None,
                    "next_attempt_at": now - timedelta(minutes=5)})
    return out


def seed_demo(engine: sa.Engine, mongo: Database[dict[str, Any]], config: ReconConfig, *,
              clients: int = 200, drift_rate: float = 0.1, seed: int = 7,
              now: datetime | None = None) -> SeedSummary:
    """Replace the demo domain's rows and documents with fresh data and drift."""
    if not 0 <= drift_rate <= 1:
        raise ValueError(f"drift rate must be between 0 and 1, got {drift_rate}")
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    rng = random.Random(seed + 1)
    rows = generate_rows(clients, seed, now)
    with_debts = {r["client_ref"] for r in rows["creditor_debts"]}
    drift = {name: _choose_drift(rng, name, rows[name], config.entity(name).source.key,
                                 drift_rate, with_debts if name == "clients" else set())
             for name in ("clients", "creditor_debts", "incoming_emails")}
    drifted = set(drift["incoming_emails"].missing) | set(drift["incoming_emails"].mismatched)
    outbox = _outbox_rows(rng, rows, now, drifted)
    expired = [{"key": f"demo-expired-{i}", "scope": "demo", "response": None,
                "expires_at": now - timedelta(hours=1 + i)} for i in range(4)]
    live = [{"key": f"demo-live-{i}", "scope": "demo", "response": json.loads('{"ok": true}'),
             "expires_at": now + timedelta(days=1)} for i in range(2)]
    with engine.begin() as conn:
        for table in (*DEMO_TABLES, schema.outbox_messages, schema.idempotency_keys):
            conn.execute(table.delete())
        for table in reversed(DEMO_TABLES):
            _insert(conn, table, rows[table.name])
        _insert(conn, schema.outbox_messages, outbox)
        _insert(conn, schema.idempotency_keys, expired + live)
    for collection in {e.target.collection for e in config.entities}:
        mongo.drop_collection(collection)
    orphan_parent = rows["clients"][0]["client_ref"] if rows["clients"] else None
    for name in ("clients", "creditor_debts", "incoming_emails"):
        entity = config.entity(name)
        ops = _mongo_ops(entity, rows[name], drift[name], orphan_parent)
        if ops:
            mongo[entity.target.collection].bulk_write(ops, ordered=True)
    ensure_target_indexes(mongo, config.entities)
    kinds = {"failed": sum(m["status"] == "failed" for m in outbox),
             "malformed": sum(m["status"] == "pending" for m in outbox)}
    return SeedSummary(now, drift, kinds, len(expired), len(live))


def _insert(conn: sa.Connection, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    if batch:
        conn.execute(table.insert(), batch)
