"""The command line: exit codes, clear errors, secrets never printed, nothing destroyed
on servers the project did not start."""

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pymongo.database import Database
from pymongo.uri_parser import parse_uri

from recon_pipeline.cli.main import main
from recon_pipeline.local import embedded
from recon_pipeline.local.demo_data import seed_demo
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline_tests.conftest import ServerUrls, mongo_url_of

BAD_PG = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
BAD_MONGO = "mongodb://u:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=300"


@pytest.mark.parametrize(
    "argv", [["db", "init"], ["demo", "seed", "--yes"], ["demo", "--yes", "seed"],
             ["demo", "--yes"]],
    ids=lambda a: " ".join(a))
def test_unreachable_postgres_gives_clear_masked_error(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", BAD_PG)
    monkeypatch.setenv("MONGODB_URL", BAD_MONGO)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "cannot connect to PostgreSQL at postgresql+psycopg://u:***@127.0.0.1:1/x" in err
    assert "s3cret" not in out + err


def test_unreachable_mongodb_gives_clear_masked_error(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", BAD_MONGO)
    assert main(["demo", "seed", "--clients", "5", "--yes"]) == 1
    out, err = capsys.readouterr()
    assert "cannot connect to MongoDB at mongodb://u:***@127.0.0.1:1/" in err
    assert "s3cret" not in out + err


def test_db_init_twice_creates_nothing_the_second_time(
    fresh_database: str, servers: ServerUrls, mongo_db, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db.name)
    assert main(["db", "init"]) == 0
    out, err = capsys.readouterr()
    assert "(18 objects created)" in out
    assert "collection 'incoming_emails' does not exist yet" in err  # a warning only
    # the windowed orphan scan reads by the mapped updated_at, elements included
    assert "updated_at_1" in mongo_db.incoming_emails.index_information()
    assert "final_creditor_list.updated_at_1" in mongo_db.clients.index_information()
    assert main(["db", "init"]) == 0
    out, err = capsys.readouterr()
    assert "(0 objects created)" in out
    assert "does not exist yet" not in err


def test_bad_mapping_exits_2_naming_the_column(
    pg_url: str, servers: ServerUrls, tmp_path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from recon_pipeline.local.environment import packaged_mapping_path

    bad = tmp_path / "recon.yaml"
    bad.write_text(packaged_mapping_path().read_text().replace("email: contact.email",
                                                               "emial: contact.email"))
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("RECON_CONFIG", str(bad))
    assert main(["demo", "seed", "--clients", "3", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "mapping entity 'clients': column 'emial' not in table 'clients'" in err


def test_demo_seed_is_deterministic_per_seed(
    pg_url: str, servers: ServerUrls, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("MONGODB_DATABASE", "recon_cli_seed_test")
    assert main(["demo", "seed", "--clients", "30", "--seed", "3", "--yes"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "seed", "--clients", "30", "--seed", "3", "--yes"]) == 0
    assert capsys.readouterr().out == first
    assert "clients                            30" in first
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from clients")).scalar() == 30
    engine.dispose()
    from pymongo import MongoClient

    MongoClient(servers.mongodb_url).drop_database("recon_cli_seed_test")


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "seed", "--clients", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def _both_databases(engine: sa.Engine, mongo: Database[Any]) -> dict[str, Any]:
    """Every row of the tables `demo` writes and every document of its collections."""
    with engine.connect() as conn:
        rows = {table: sorted(map(repr, conn.execute(sa.text(f"select * from {table}"))))
                for table in ("clients", "creditor_debts", "incoming_emails",
                              "outbox_messages", "idempotency_keys", "reconciliation_reports")}
    documents = {name: sorted(map(repr, mongo[name].find())) for name in
                 sorted(mongo.list_collection_names())}
    return {"rows": rows, "documents": documents}


@pytest.fixture
def seeded_elsewhere(pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any],
                     config: ReconConfig, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Data on servers this project did not start, as far as the CLI knows: the URLs are
    set and no embedded pair is recorded. The password is accepted by trust auth."""
    seed_demo(pg_engine, mongo_db, config, clients=6, drift_rate=0.0, seed=1)
    url = sa.make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MONGODB_URL", mongo_url_of(mongo_db))
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db.name)
    monkeypatch.setenv("RECON_EMBEDDED_HOME", str(tmp_path / "no-embedded"))
    monkeypatch.delenv("RECON_CONFIG", raising=False)
    before = _both_databases(pg_engine, mongo_db)
    assert len(before["rows"]["clients"]) == 6
    assert len(before["documents"]["clients"]) == 6 + 1  # the seed's one orphan
    return before


@pytest.mark.parametrize("argv", [["demo", "seed", "--clients", "3"], ["demo"]],
                         ids=lambda a: " ".join(a))
def test_demo_refuses_servers_it_did_not_start_and_touches_nothing(
    argv: list[str], seeded_elsewhere: dict[str, Any], pg_url: str, pg_engine: sa.Engine,
    mongo_db: Database[Any], capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    masked_pg = sa.make_url(pg_url).set(password="***").render_as_string(hide_password=False)
    assert out == ""
    assert "on servers this project did not start: DATABASE_URL=" + masked_pg.replace(
        "%2A%2A%2A", "***") + f", MONGODB_URL={mongo_url_of(mongo_db)}." in err
    assert f"mapped collections of MongoDB database '{mongo_db.name}'" in err
    assert "Nothing was touched. Pass --yes to replace that data" in err
    assert "s3cret-pw" not in err
    assert _both_databases(pg_engine, mongo_db) == seeded_elsewhere


def test_demo_seed_with_yes_replaces_the_data(
    seeded_elsewhere: dict[str, Any], pg_engine: sa.Engine, mongo_db: Database[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "seed", "--clients", "3", "--drift-rate", "0", "--yes"]) == 0
    assert "s3cret-pw" not in "".join(capsys.readouterr())
    after = _both_databases(pg_engine, mongo_db)
    assert len(after["rows"]["clients"]) == 3
    assert len(after["documents"]["clients"]) == 3 + 1
    assert after["rows"]["reconciliation_reports"] == []


def test_demo_seed_on_the_recorded_embedded_servers_needs_no_yes(
    seeded_elsewhere: dict[str, Any], servers: ServerUrls, pg_engine: sa.Engine,
    mongo_db: Database[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test servers recorded as the embedded pair: the project's own servers. (The
    pids are never used: both URLs are set, so nothing starts or stops the pair.)"""
    home = tmp_path / "embedded"
    home.mkdir()
    pg_port = sa.make_url(servers.postgres_admin_url).port
    [(_, mongo_port)] = parse_uri(mongo_url_of(mongo_db), validate=False)["nodelist"]
    (home / "state.json").write_text(json.dumps({
        "postgres": {"name": "postgres", "port": pg_port, "pid": -1, "datadir": str(home)},
        "mongodb": {"name": "mongodb", "port": mongo_port, "pid": -1, "datadir": str(home)}}))
    monkeypatch.setenv("RECON_EMBEDDED_HOME", str(home))
    assert main(["demo", "seed", "--clients", "4", "--drift-rate", "0"]) == 0
    after = _both_databases(pg_engine, mongo_db)
    assert (len(after["rows"]["clients"]), len(after["documents"]["clients"])) == (4, 4 + 1)
    assert embedded.read_state(home) is not None  # the recorded pair left as it was
