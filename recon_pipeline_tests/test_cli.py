"""The command line: exit codes, clear errors, secrets never printed."""

import pytest
import sqlalchemy as sa

from recon_pipeline.cli import main
from recon_pipeline_tests.conftest import ServerUrls

BAD_PG = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
BAD_MONGO = "mongodb://u:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=300"


@pytest.mark.parametrize("argv", [["db", "init"], ["demo", "seed"], ["demo"]],
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
    assert main(["demo", "seed", "--clients", "5"]) == 1
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
    from recon_pipeline.environment import packaged_mapping_path

    bad = tmp_path / "recon.yaml"
    bad.write_text(packaged_mapping_path().read_text().replace("email: contact.email",
                                                               "emial: contact.email"))
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("RECON_CONFIG", str(bad))
    assert main(["demo", "seed", "--clients", "3"]) == 2
    err = capsys.readouterr().err
    assert "mapping entity 'clients': column 'emial' not in table 'clients'" in err


def test_demo_seed_is_deterministic_per_seed(
    pg_url: str, servers: ServerUrls, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("MONGODB_URL", servers.mongodb_url)
    monkeypatch.setenv("MONGODB_DATABASE", "recon_cli_seed_test")
    assert main(["demo", "seed", "--clients", "30", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "seed", "--clients", "30", "--seed", "3"]) == 0
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
