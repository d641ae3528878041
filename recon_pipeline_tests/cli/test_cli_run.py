"""`recon-pipeline run` and `report`: one run of the job through Dagster, the report
printed, exit codes of SPEC 8, secrets never printed."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from dagster._serdes import serialize_value
from pymongo.database import Database
from pymongo.uri_parser import parse_uri

from recon_pipeline.cli.main import main
from recon_pipeline.model.mapping import ReconConfig
from recon_pipeline_tests.conftest import mongo_url_of
from recon_pipeline_tests.dagster_support import WINDOW_END, WINDOW_START, seed


@pytest.fixture
def cli_env(pg_url: str, mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI pointed at the test servers, the password spelled out (trust auth ignores
    it), so any leak of it would show."""
    url = sa.make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("MONGODB_URL", mongo_url_of(mongo_db))
    monkeypatch.setenv("MONGODB_DATABASE", mongo_db.name)
    for name in ("DAGSTER_HOME", "RECON_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return url


def test_run_prints_the_json_report_and_exits_1_when_not_success(
    cli_env: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeded = seed(pg_engine, mongo_db, config)
    code = main(["run", "--start", WINDOW_START.isoformat(), "--end", WINDOW_END.isoformat(),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    report = json.loads(out)
    assert {name: report[name] for name in seeded.counts} == seeded.counts
    assert (report["status"], report["window_start"], report["window_end"]) == (
        "needs_attention", WINDOW_START.isoformat(), WINDOW_END.isoformat())
    assert "s3cret-pw" not in out + err


def test_a_clean_run_exits_0_and_report_lists_it(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--lookback-hours", "2", "--entity", "clients"]) == 0
    text = capsys.readouterr().out
    assert "status success" in text and "checked 0" in text
    assert main(["report", "--last", "3", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["status"] == "success" and listed["records_checked"] == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--start", "2026-03-01T00:00Z"], "--start and --end go together"),
    (["run", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T02:00Z",
      "--lookback-hours", "3"], "cannot be combined"),
    (["run", "--lookback-hours", "-1"], "must be positive"),
    (["run", "--start", "yesterday", "--end", "today"], "not an ISO 8601 datetime"),
    (["run", "--start", "2026-03-02T00:00Z", "--end", "2026-03-01T00:00Z"], "window is empty"),
    (["run", "--entity", "invoices"], "unknown entity 'invoices'"),
    (["report", "--last", "0"], "--last must be at least 1"),
])
def test_bad_arguments_exit_2_with_a_clear_message(
    cli_env: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "s3cret-pw" not in err


def test_unreachable_postgres_exits_1_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/x")
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200")
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and "s3cret-pw" not in err


PG_PASSWORD, MONGO_PASSWORD = "Pg-s3cret/pw", "Mg-s3cret@pw"


@pytest.fixture
def mongo_user(mongo_db: Database[Any]) -> Iterator[str]:
    """A MongoDB user with a password, so the run authenticates with a real secret."""
    name = f"recon_{mongo_db.name}"
    mongo_db.client.admin.command("createUser", name, pwd=MONGO_PASSWORD, roles=["root"])
    yield name
    mongo_db.client.admin.command("dropUser", name)


def test_no_secret_reaches_the_instance_the_report_or_the_output(
    pg_url: str, pg_engine: sa.Engine, mongo_db: Database[Any], mongo_user: str,
    config: ReconConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CLI run recorded in a DagsterInstance with passwords in both URLs (PostgreSQL's
    trust auth accepts any; MongoDB checks its user's): the resources read the URLs
    through EnvVar, so neither password, in either spelling, lands anywhere."""
    [(host, port)] = parse_uri(mongo_url_of(mongo_db), validate=False)["nodelist"]
    pg = sa.make_url(pg_url).set(password=PG_PASSWORD).render_as_string(hide_password=False)
    mongo = (f"mongodb://{mongo_user}:{quote_plus(MONGO_PASSWORD)}@{host}:{port}/"
             "?directConnection=true&authSource=admin")
    forms = {PG_PASSWORD, quote_plus(PG_PASSWORD), quote(PG_PASSWORD, safe=""),
             MONGO_PASSWORD, quote_plus(MONGO_PASSWORD)}
    assert sa.make_url(pg).password == PG_PASSWORD
    assert parse_uri(mongo, validate=False)["password"] == MONGO_PASSWORD
    home = tmp_path / "dagster_home"
    home.mkdir()
    for name, value in {"DATABASE_URL": pg, "MONGODB_URL": mongo, "DAGSTER_HOME": str(home),
                        "MONGODB_DATABASE": mongo_db.name}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RECON_CONFIG", raising=False)
    seeded = seed(pg_engine, mongo_db, config)

    code = main(["run", "--start", WINDOW_START.isoformat(), "--end", WINDOW_END.isoformat(),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    report = json.loads(out)
    assert {name: report[name] for name in seeded.counts} == seeded.counts
    assert report["status"] == "needs_attention"
    # both databases: every missing or mismatched document repaired, orphans kept
    drift = seeded.summary.drift["clients"]
    assert mongo_db.clients.count_documents({}) == drift.rows + len(drift.orphans)

    with DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.run_id == report["run_id"]
        stored = {
            "run config": serialize_value(run.run_config),
            "resource config": serialize_value(
                instance.get_job_snapshot(run.job_snapshot_id or "")),
            "execution plan": serialize_value(
                instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id or "")),
            "event log": serialize_value(list(instance.all_logs(run.run_id))),
        }
    assert '"report_id"' in stored["event log"]  # the materialization's metadata is there
    with pg_engine.connect() as conn:
        stored["report row"] = repr(conn.execute(sa.text(
            "select * from reconciliation_reports")).all())
    stored["output"] = out + err
    leaks = {where: sorted(form for form in forms if form in text)
             for where, text in stored.items()}
    assert leaks == {where: [] for where in stored}
    # the resources' config as stored: the variables' names where the URLs were
    assert r'\"database_url\": {\"env\": \"DATABASE_URL\"}' in stored["resource config"]
    assert r'\"mongodb_url\": {\"env\": \"MONGODB_URL\"}' in stored["resource config"]


def test_run_prints_progress_lines_on_stderr_while_stdout_stays_json(
    cli_env: str, pg_engine: sa.Engine, mongo_db: Database[Any], config: ReconConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a terminal (pytest captures stderr): the run log's own lines, one at each
    chunk's start and end at least; the report on stdout still parses."""
    seed(pg_engine, mongo_db, config)
    code = main(["run", "--full-scan", "--dry-run", "--entity", "clients", "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    report = json.loads(out)
    checked = report["records_checked"]
    lines = [line for line in err.splitlines() if line.startswith("chunk clients_0: ")]
    assert len(lines) >= 2, err
    assert re.match(r"chunk clients_0: 0(/~?[\d,]+)? rows, 0 rows/s, ", lines[0]), lines[0]
    assert lines[-1].startswith(f"chunk clients_0: {checked:,}/{checked:,} rows, ")
    assert "done in" in lines[-1] and "s3cret-pw" not in err
