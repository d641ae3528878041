"""The process environment (SPEC 3), resolved to concrete server URLs.

When `DATABASE_URL` / `MONGODB_URL` are absent the embedded servers are started (or
reused), so every command works on a fresh machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from recon_pipeline.model.masking import url_secrets

DEFAULT_PARTITIONS_START = "2026-01-01-00:00"


def packaged_mapping_path() -> Path:
    return Path(str(resources.files("recon_pipeline") / "recon.yaml"))


@dataclass(frozen=True, slots=True)
class Environment:
    database_url: str
    mongodb_url: str
    mongodb_database: str
    config_path: Path
    dagster_postgres_url: str | None
    partitions_start: str
    timezone: str
    # The URL variables (DATABASE_URL, MONGODB_URL) the process environment set: those
    # servers are not necessarily ours, and resources read them through `EnvVar`.
    url_variables: frozenset[str] = frozenset()

    @property
    def secrets(self) -> tuple[str, ...]:
        return url_secrets(self.database_url, self.mongodb_url, self.dagster_postgres_url)


def _set(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def mapping_path(env: Mapping[str, str] | None = None) -> Path:
    """RECON_CONFIG, else the packaged mapping."""
    return Path(_set(os.environ if env is None else env, "RECON_CONFIG")
                or packaged_mapping_path())


def mongodb_database(env: Mapping[str, str] | None = None) -> str:
    """MONGODB_DATABASE, else `recon`."""
    return _set(os.environ if env is None else env, "MONGODB_DATABASE") or "recon"


def resolve_environment(env: Mapping[str, str] | None = None) -> Environment:
    """Read SPEC 3's variables; start the embedded servers for whatever URL is missing."""
    env = os.environ if env is None else env
    database_url = _set(env, "DATABASE_URL")
    mongodb_url = _set(env, "MONGODB_URL")
    dagster_url = _set(env, "DAGSTER_POSTGRES_URL")
    if database_url is None or mongodb_url is None:
        from recon_pipeline.local import embedded

        state = embedded.start()
        database_url = database_url or state.database_url
        mongodb_url = mongodb_url or state.mongodb_url
        dagster_url = dagster_url or state.dagster_postgres_url
    return Environment(
        database_url=normalize_postgres_url(database_url),
        mongodb_url=mongodb_url,
        mongodb_database=mongodb_database(env),
        config_path=mapping_path(env),
        dagster_postgres_url=dagster_url,
        partitions_start=_set(env, "RECON_PARTITIONS_START") or DEFAULT_PARTITIONS_START,
        timezone=_set(env, "RECON_TIMEZONE") or "UTC",
        url_variables=frozenset(name for name in ("DATABASE_URL", "MONGODB_URL")
                                if _set(env, name)),
    )


def normalize_postgres_url(url: str) -> str:
    """Our engine speaks psycopg 3; accept the bare and psycopg2 spellings too."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
