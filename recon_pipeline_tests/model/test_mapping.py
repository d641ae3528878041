"""The mapping loader: the packaged demo mapping, and a clear error for each bad input."""

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from recon_pipeline.local.environment import packaged_mapping_path
from recon_pipeline.model.mapping import (
    MappingError,
    collection_warnings,
)
from recon_pipeline.model.normalize import ValueKind
from recon_pipeline.model.settings import CleanupSettings, SettingsError, parse_settings
from recon_pipeline.stores.postgres import load_mapping


def _packaged() -> dict:
    return yaml.safe_load(packaged_mapping_path().read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recon.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_packaged_mapping_describes_the_demo_domain(pg_engine: sa.Engine) -> None:
    config = load_mapping(packaged_mapping_path(), pg_engine)
    assert config.entity_names == ("clients", "creditor_debts", "incoming_emails")
    assert config.settings.lookback_hours == 48
    assert config.settings.outbox.max_attempts == 8
    assert config.settings.cleanup.mismatch_retention_days == 90
    debts = config.entity("creditor_debts")
    assert debts.target.embedded is not None
    assert debts.target.embedded.parent_key == "client_ref"
    amount = next(f for f in debts.fields if f.column == "debt_amount")
    assert (amount.target, amount.kind, amount.tolerance) == (
        "current_debt_amount", ValueKind.DECIMAL, Decimal("0.005"))
    clients = config.entity("clients")
    assert {f.column: f.target for f in clients.fields}["email"] == "contact.email"
    assert {f.column: f.kind for f in clients.fields}["updated_at"] == ValueKind.DATETIME
    assert debts.key_kind == ValueKind.INTEGER
    emails = config.entity("incoming_emails")
    assert emails.source.sync_tracking is not None
    assert emails.source.sync_tracking.status == "mongo_sync_status"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["entities"]["clients"]["fields"].update({"emial": "contact.mail"}),
         "mapping entity 'clients': column 'emial' not in table 'clients'"),
        (lambda r: r["entities"]["clients"]["source"].update({"table": "clientz"}),
         "mapping entity 'clients': table 'clientz' does not exist"),
        (lambda r: r["entities"]["clients"]["source"].update({"key": "ref"}),
         "mapping entity 'clients': column 'ref' not in table 'clients'"),
        (lambda r: r["entities"]["clients"]["fields"].update({"last_name": "first_name"}),
         "mapping entity 'clients': field 'last_name': duplicate target path 'first_name'"),
        (lambda r: r["entities"]["clients"]["fields"].update({"last_name": "contact"}),
         "mapping entity 'clients': target path 'contact' overlaps 'contact.email'"),
        (lambda r: r["entities"]["incoming_emails"]["fields"].update(
            {"subject": {"field": "subject", "type": "money"}}),
         "mapping entity 'incoming_emails': field 'subject': unknown field type 'money'"),
        (lambda r: r["entities"]["incoming_emails"]["fields"].update({"subject": "$subject"}),
         "mapping entity 'incoming_emails': field 'subject': invalid target path '$subject'"),
        (lambda r: r["entities"]["creditor_debts"]["target"]["embedded"].update(
            {"parent_key": "client"}),
         "mapping entity 'creditor_debts': column 'client' not in table 'creditor_debts'"),
        (lambda r: r["entities"]["incoming_emails"]["source"]["sync_tracking"].update(
            {"error": "sync_error"}),
         "mapping entity 'incoming_emails': column 'sync_error' not in table 'incoming_emails'"),
        (lambda r: r["settings"].update({"chunk_size": "big"}),
         "settings: setting 'chunk_size' must be a whole number"),
        (lambda r: r["settings"].update({"lookback": 3}), "settings: unknown setting 'lookback'"),
        (lambda r: r["entities"]["clients"].pop("target"),
         "mapping entity 'clients': 'target' must be a non-empty mapping"),
        # A misspelt key is never ignored: a scope that silently did not apply would run
        # unscoped (and with delete_orphans on, delete what it should not).
        (lambda r: r["entities"]["clients"]["source"].update({"wher": {"status": "active"}}),
         "mapping entity 'clients': unknown key 'wher' in source (expected: table, key, "
         "updated_at, sync_tracking, where)"),
        (lambda r: r["entities"]["clients"]["target"].update({"colection": "x"}),
         "mapping entity 'clients': unknown key 'colection' in target"),
        (lambda r: r["entities"]["creditor_debts"]["target"]["embedded"].update(
            {"element": "id"}),
         "mapping entity 'creditor_debts': unknown key 'element' in embedded"),
        (lambda r: r["entities"]["incoming_emails"]["source"]["sync_tracking"].update(
            {"synced": "x"}),
         "mapping entity 'incoming_emails': unknown key 'synced' in sync_tracking"),
        (lambda r: r["entities"]["incoming_emails"]["fields"].update(
            {"subject": {"field": "subject", "tolerence": 1}}),
         "mapping entity 'incoming_emails': unknown key 'tolerence' in field 'subject'"),
        (lambda r: r["entities"]["clients"].update({"feilds": {}}),
         "mapping entity 'clients': unknown key 'feilds' in the entity"),
    ],
    ids=["misspelt-column", "missing-table", "bad-key", "duplicate-target", "overlapping-target",
         "unknown-type", "dollar-path", "bad-parent-key", "bad-sync-column", "bad-setting",
         "unknown-setting", "no-target", "unknown-source-key", "unknown-target-key",
         "unknown-embedded-key", "unknown-tracking-key", "unknown-field-key",
         "unknown-entity-key"],
)
def test_bad_mapping_fails_naming_entity_and_name(
    pg_engine: sa.Engine, tmp_path: Path, mutate, message: str
) -> None:
    raw = _packaged()
    mutate(raw)
    with pytest.raises(MappingError) as error:
        load_mapping(_write(tmp_path, raw), pg_engine)
    assert message in str(error.value)


def test_a_name_yaml_reads_as_a_boolean_fails_saying_to_quote_it(
    pg_engine: sa.Engine, tmp_path: Path
) -> None:
    """`no`, `yes`, `on`, `off` unquoted are booleans to YAML 1.1: a field named `no`
    (a stop number, say) must be quoted, and the error says so."""
    text = packaged_mapping_path().read_text().replace(
        "element_key: creditor_id", "element_key: no")
    assert "element_key: no" in text
    path = tmp_path / "recon.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as error:
        load_mapping(path, pg_engine)
    assert ("mapping entity 'creditor_debts': field 'element_key': target must be a field "
            "path (YAML read an unquoted name as the boolean false: quote it, e.g. 'no')"
            ) in str(error.value)


def test_invalid_yaml_fails_at_load_time(pg_engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "recon.yaml"
    path.write_text("entities: {clients: [unclosed\n")
    with pytest.raises(MappingError, match=r"recon\.yaml: not valid YAML"):
        load_mapping(path, pg_engine)


def test_missing_collection_is_only_a_warning(pg_engine: sa.Engine) -> None:
    config = load_mapping(packaged_mapping_path(), pg_engine)
    assert collection_warnings(config, {"clients"}) == [
        "mapping entity 'incoming_emails': collection 'incoming_emails' does not exist yet"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"chunk_size": 2.5}, "settings: setting 'chunk_size' must be a whole number"),
    ({"chunk_size": True}, "settings: setting 'chunk_size' must be a whole number"),
    ({"repair_limit": 0}, "settings: setting 'repair_limit' must be at least 1"),
    ({"lookback_hours": -1}, "settings: setting 'lookback_hours' must be at least 0"),
    ({"settle_seconds": "60"}, "settings: setting 'settle_seconds' must be a number"),
    ({"delete_orphans": "yes"}, "settings: setting 'delete_orphans' must be true or false"),
    ({"outbox": {"batch_size": 0}}, "settings.outbox: setting 'batch_size' must be at least 1"),
    ({"outbox": {"batch": 5}}, "settings.outbox: unknown setting 'batch'"),
    ({"cleanup": {"batch_size": 0}},
     "settings.cleanup: setting 'batch_size' must be at least 1"),
    ({"cleanup": 7}, "settings: 'cleanup' must be a mapping"),
], ids=["fractional-count", "bool-count", "zero-limit", "negative-lookback", "string-number",
        "string-bool", "zero-outbox-batch", "unknown-outbox-setting", "zero-cleanup-batch",
        "scalar-section"])
def test_bad_setting_fails_naming_it(settings: dict, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings({"settings": settings})
    assert str(error.value) == message


def test_whole_numbers_stand_for_floats_and_zero_lookback_is_allowed() -> None:
    settings = parse_settings({"settings": {"lookback_hours": 0, "settle_seconds": 5,
                                            "outbox": {"backoff_base_seconds": 1}}})
    assert (settings.lookback_hours, settings.settle_seconds) == (0.0, 5.0)
    assert settings.outbox.backoff_base_seconds == 1.0
    assert settings.cleanup == CleanupSettings()  # a section left out keeps its defaults
