"""The local Dagster instance: `make dev` serves it, `make demo` records in it.

Both start (or reuse) the embedded servers for whatever URL is unset and point
DAGSTER_HOME at ./.dagster_home holding the project's dagster.yaml (instance storage on
PostgreSQL, `DAGSTER_POSTGRES_URL`), so what `make demo` runs, `make dev` shows:

    python -m recon_pipeline.local.dev        # `dagster dev` on 127.0.0.1:3000
    python -m recon_pipeline.local.dev demo   # `recon-pipeline demo`, recorded there

Each replaces this process (`os.execv`), so Ctrl-C reaches it directly."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from recon_pipeline.local.environment import Environment, resolve_environment
from recon_pipeline.model.masking import mask_url
from recon_pipeline.stores.postgres import connect_engine
from recon_pipeline.stores.schema import init_schema

HOST, PORT = "127.0.0.1", 3000
HOME_DIRECTORY = ".dagster_home"


def dagster_home_environment(home: Path, dagster_postgres_url: str,
                             project_root: Path) -> dict[str, str]:
    """A DAGSTER_HOME holding the project's dagster.yaml, and the variables that make a
    process (dagster dev, the CLI) load that instance."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(project_root / "dagster.yaml", home / "dagster.yaml")
    return {"DAGSTER_HOME": str(home), "DAGSTER_POSTGRES_URL": dagster_postgres_url}


def local_instance_environment(root: Path, env: Environment) -> dict[str, str]:
    """The project's own instance, `<root>/.dagster_home`, on the resolved PostgreSQL."""
    if env.dagster_postgres_url is None:
        raise SystemExit("DAGSTER_POSTGRES_URL is not set (and no embedded server started)")
    return dagster_home_environment(root / HOME_DIRECTORY, env.dagster_postgres_url, root)


def prepare_environment(root: Path) -> dict[str, str]:
    """`make dev`: the schema created, every URL exported for the webserver and daemon."""
    env = resolve_environment()
    engine = connect_engine(env.database_url)
    try:
        init_schema(engine)
    finally:
        engine.dispose()
    return {"DATABASE_URL": env.database_url, "MONGODB_URL": env.mongodb_url,
            "MONGODB_DATABASE": env.mongodb_database, **local_instance_environment(root, env)}


def _executable(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def main(argv: Sequence[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    root = Path.cwd()
    if not (root / "workspace.yaml").exists():
        raise SystemExit("run `make dev` / `make demo` from the project root "
                         "(workspace.yaml not found)")
    if command[:1] == ["demo"]:
        # Only the instance is exported: `demo` resolves the servers itself, and treats
        # the embedded pair as its own (SPEC 8).
        exported = local_instance_environment(root, resolve_environment())
        os.environ.update(exported)
        print(f"DAGSTER_HOME={exported['DAGSTER_HOME']} (`make dev` shows this run)",
              flush=True)
        cli = _executable("recon-pipeline")
        os.execv(cli, [cli, *command])
    exported = prepare_environment(root)
    os.environ.update(exported)
    for name in ("DATABASE_URL", "MONGODB_URL", "DAGSTER_POSTGRES_URL"):
        print(f"{name}={mask_url(exported[name])}", flush=True)
    print(f"DAGSTER_HOME={exported['DAGSTER_HOME']}\nUI: http://{HOST}:{PORT}", flush=True)
    dagster = _executable("dagster")
    os.execv(dagster, [dagster, "dev", "-h", HOST, "-p", str(PORT), "-w", "workspace.yaml"])


if __name__ == "__main__":
    main()
