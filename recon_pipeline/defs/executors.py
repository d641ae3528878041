"""The executor every run of the code location uses, chosen by `RECON_EXECUTOR`."""

import os

from dagster import ExecutorDefinition


def selected_executor() -> ExecutorDefinition | None:
    """`RECON_EXECUTOR` where the code location loads — the daemon's run processes and
    every celery worker alike (README "Running on Celery"): `celery` sends each step to
    the dagster-celery workers (the optional extra `celery`); unset or `multiprocess`,
    Dagster's default, the multiprocess executor."""
    name = os.environ.get("RECON_EXECUTOR", "").strip().lower()
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    if name not in ("", "multiprocess"):
        raise ValueError(f"RECON_EXECUTOR={name!r}: expected 'celery', 'multiprocess' or unset")
    return None
