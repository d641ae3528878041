"""PostgreSQL access: engines with masked errors, reflection for mapping checks, locks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.model.mapping import (
    MappingError,
    ReconConfig,
    TableCatalog,
    bind_mapping,
    mapped_tables,
    read_mapping_file,
)
from recon_pipeline.model.masking import mask_text, mask_url, url_secrets

CONNECT_TIMEOUT_SECONDS = 10
# Values of `timestamp without time zone` columns are UTC (SPEC 6, "Window"), and so must
# be every conversion between them and aware datetimes: the session's TimeZone decides it.
UTC_SESSION = "-c TimeZone=UTC"


class DatabaseUnavailable(RuntimeError):
    """A server could not be reached; the message is already masked."""


def create_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """Every session of ours runs with TimeZone UTC, whatever the server's or database's
    default (options given in the URL are kept: connect_args would replace them)."""
    return sa.create_engine(
        url,
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                      "options": _session_options(url)},
    )


def _session_options(url: str) -> str:
    given = sa.make_url(url).query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else given
    return f"{given} {UTC_SESSION}" if given else UTC_SESSION


def unavailable(url: str, error: BaseException, *, lost: bool = False) -> DatabaseUnavailable:
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    detail = reason[0] if reason else type(error).__name__
    what = "lost the connection to" if lost else "cannot connect to"
    return DatabaseUnavailable(
        mask_text(f"{what} PostgreSQL at {mask_url(url)}: {detail}", url_secrets(url)))


def name_lost_server(engine: sa.Engine, url: str) -> sa.Engine:
    """`engine`, whose errors from the server going away (a restart, a crash, the network;
    SQLAlchemy judges it) become DatabaseUnavailable naming the (masked) server, wherever
    the statement ran."""
    def lost(context: sa.engine.ExceptionContext) -> None:
        if context.is_disconnect:
            raise unavailable(url, context.sqlalchemy_exception or context.original_exception,
                              lost=True)

    sa.event.listen(engine, "handle_error", lost)
    return engine


def connect_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """An engine that has proven it can connect; DatabaseUnavailable otherwise."""
    engine = create_engine(url, pool_size=pool_size)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        engine.dispose()
        raise unavailable(url, error) from None
    return engine


def reflect_catalog(engine: sa.Engine, tables: Iterable[str]) -> TableCatalog:
    """Column types of the named tables that exist (missing tables are simply absent)."""
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names())
    return {
        table: {col["name"]: col["type"] for col in inspector.get_columns(table)}
        for table in tables if table in present
    }


@contextmanager
def advisory_lock(engine: sa.Engine, name: str) -> Iterator[bool]:
    """Session-level advisory lock held for the block; yields False when another holds it."""
    with engine.connect() as conn:
        got = bool(conn.execute(sa.text("select pg_try_advisory_lock(hashtext(:n))"),
                                {"n": name}).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(sa.text("select pg_advisory_unlock(hashtext(:n))"), {"n": name})
                conn.commit()


def load_mapping(path: Path, engine: sa.Engine) -> ReconConfig:
    """Read `path` and bind it to the schema behind `engine` (a SQLAlchemy Engine)."""
    raw = read_mapping_file(path)
    try:
        return bind_mapping(raw, reflect_catalog(engine, mapped_tables(raw)))
    except MappingError as error:
        raise MappingError(f"mapping file {path}: {error}") from None
