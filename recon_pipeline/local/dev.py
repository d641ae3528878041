"""`make dev`: the Dagster UI on 127.0.0.1:3000 with instance storage on PostgreSQL.

Starts (or reuses) the embedded servers for whatever URL is unset, creates the schema,
points DAGSTER_HOME at ./.dagster_home holding the project's dagster.yaml, then replaces
this process with `dagster dev` (so Ctrl-C reaches it directly)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from recon_pipeline.local.environment import resolve_environment
from recon_pipeline.model.masking import mask_url
from recon_pipeline.stores.postgres import connect_engine
from recon_pipeline.stores.schema import init_schema

HOST, PORT = "127.0.0.1", 3000


def prepare_environment(root: Path) -> dict[str, str]:
    env = resolve_environment()
    if env.dagster_postgres_url is None:
        raise SystemExit("DAGSTER_POSTGRES_URL is not set (and no embedded server started)")
    engine = connect_engine(env.database_url)
    try:
        init_schema(engine)
    finally:
        engine.dispose()
    home = root / ".dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(root / "dagster.yaml", home / "dagster.yaml")
    return {"DATABASE_URL": env.database_url, "MONGODB_URL": env.mongodb_url,
            "MONGODB_DATABASE": env.mongodb_database,
            "DAGSTER_POSTGRES_URL": env.dagster_postgres_url, "DAGSTER_HOME": str(home)}


def main() -> None:
    root = Path.cwd()
    if not (root / "workspace.yaml").exists():
        raise SystemExit("run `make dev` from the project root (workspace.yaml not found)")
    exported = prepare_environment(root)
    os.environ.update(exported)
    for name in ("DATABASE_URL", "MONGODB_URL", "DAGSTER_POSTGRES_URL"):
        print(f"{name}={mask_url(exported[name])}", flush=True)
    print(f"DAGSTER_HOME={exported['DAGSTER_HOME']}\nUI: http://{HOST}:{PORT}", flush=True)
    dagster = str(Path(sys.executable).with_name("dagster"))
    os.execv(dagster, [dagster, "dev", "-h", HOST, "-p", str(PORT), "-w", "workspace.yaml"])


if __name__ == "__main__":
    main()
