"""The run lock of SPEC 7: a lease row in PostgreSQL that a run holds from its first op to
its last, whatever process each op runs in.

A session-level advisory lock cannot span a run: under the multiprocess and celery
executors every step is its own process with its own connection. So the lease names the
holding run instead. Every step of that run re-enters it and refreshes it from a
background thread while it runs; at the end of a step the lease is extended by
`lease_seconds`, which covers the gap until the next step's process starts. The run's
last op releases it; a failed run frees it when its last running step ends. A holder that
died stops refreshing, so its lease expires; on the same host (and pid namespace) a waiter
also sees at once that the holder's process is gone. Times are the database's clock, so
hosts with skewed clocks agree on expiry.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from recon_pipeline.stores.schema import reconciliation_run_lock as lock_table

RUN_LOCK_NAME = "reconciliation"


class RunLockTimeout(RuntimeError):
    """The lock stayed held by another run for the whole wait."""


class RunLockMissing(RuntimeError):
    """The database predates the run lock's table."""


@dataclass(frozen=True, slots=True)
class Claimant:
    """One process acting for one run."""

    run_id: str
    host: str
    pid: int
    pid_scope: str | None

    @classmethod
    def this_process(cls, run_id: str) -> Claimant:
        return cls(run_id, socket.gethostname(), os.getpid(), _pid_scope())

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"


@dataclass(frozen=True, slots=True)
class Holder:
    run_id: str
    holder: str
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return (f"run {self.run_id} ({self.holder}, holding since "
                f"{self.acquired_at.isoformat()}, lease until {self.expires_at.isoformat()})")


def _pid_scope() -> str | None:
    """Where a pid names the same process: this host, this boot, this pid namespace (a
    container sharing the host name has its own). None where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    # A killed child not yet reaped by its parent is a zombie: dead all the same.
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _died_here(row: sa.Row[tuple[object, ...]], claimant: Claimant) -> bool:
    """The holder's only running step died on this host. With several steps counted,
    another may still run (or the count is stale from a killed one): the lease decides."""
    return (row.pid is not None and row.active_steps <= 1 and claimant.pid_scope is not None
            and row.pid_scope == claimant.pid_scope and row.pid != claimant.pid
            and _process_gone(row.pid))


def try_acquire(engine: sa.Engine, claimant: Claimant, lease_seconds: float,
                name: str = RUN_LOCK_NAME) -> Holder | None:
    """Take the lock for `claimant.run_id`, or re-enter it when that run holds it already
    (one more active step). Returns None when taken, else who holds it."""
    with engine.begin() as conn:
        try:
            conn.execute(insert(lock_table).values(name=name).on_conflict_do_nothing())
        except sa.exc.ProgrammingError as error:
            if getattr(error.orig, "sqlstate", None) == "42P01":  # undefined_table
                raise RunLockMissing(f"table {lock_table.name} is missing: run "
                                     "`recon-pipeline db init` to create it") from None
            raise
        row = conn.execute(
            sa.select(lock_table, sa.func.now().label("now"))
            .where(lock_table.c.name == name).with_for_update()).one()
        same_run = row.run_id == claimant.run_id
        free = (row.run_id is None or row.expires_at <= row.now
                or (row.failed and row.active_steps <= 0) or _died_here(row, claimant))
        if not (same_run or free):
            return Holder(row.run_id, row.holder, row.acquired_at, row.expires_at)
        conn.execute(lock_table.update().where(lock_table.c.name == name).values(
            run_id=claimant.run_id, holder=claimant.label, pid=claimant.pid,
            pid_scope=claimant.pid_scope,
            active_steps=row.active_steps + 1 if same_run else 1,
            failed=row.failed if same_run else False,
            acquired_at=row.acquired_at if same_run else row.now, heartbeat_at=row.now,
            expires_at=row.now + timedelta(seconds=lease_seconds)))
    return None


def acquire(engine: sa.Engine, claimant: Claimant, *, lease_seconds: float,
            wait_seconds: float, poll_seconds: float,
            on_wait: Callable[[Holder], None], name: str = RUN_LOCK_NAME) -> None:
    """`try_acquire` until it succeeds, polling; `on_wait` hears of each new holder waited
    for. RunLockTimeout after `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    announced: str | None = None
    while (holder := try_acquire(engine, claimant, lease_seconds, name)) is not None:
        if holder.run_id != announced:
            on_wait(holder)
            announced = holder.run_id
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunLockTimeout(f"run lock '{name}' still held by {holder.describe()} "
                                 f"after waiting {wait_seconds:g} s")
        time.sleep(min(poll_seconds, remaining))


def refresh(engine: sa.Engine, claimant: Claimant, lease_seconds: float,
            name: str = RUN_LOCK_NAME) -> bool:
    """Extend the lease while a step runs; False when the run no longer holds it."""
    with engine.begin() as conn:
        result = conn.execute(lock_table.update().where(
            lock_table.c.name == name, lock_table.c.run_id == claimant.run_id).values(
            holder=claimant.label, pid=claimant.pid, pid_scope=claimant.pid_scope,
            heartbeat_at=sa.func.now(),
            expires_at=sa.func.now() + timedelta(seconds=lease_seconds)))
    return result.rowcount == 1


def step_done(engine: sa.Engine, claimant: Claimant, lease_seconds: float,
              name: str = RUN_LOCK_NAME) -> None:
    """A step of the holding run ended: the lease now covers the gap to the next step, or
    is freed when the run has failed and this was its last running step."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(lock_table, sa.func.now().label("now")).where(
            lock_table.c.name == name, lock_table.c.run_id == claimant.run_id,
        ).with_for_update()).one_or_none()
        if row is None:
            return  # released by the last op, or lost to another run
        active = max(row.active_steps - 1, 0)
        if row.failed and active == 0:
            conn.execute(_free(name))
            return
        own_pid = row.pid == claimant.pid and row.pid_scope == claimant.pid_scope
        conn.execute(lock_table.update().where(lock_table.c.name == name).values(
            active_steps=active, pid=None if own_pid else row.pid,
            heartbeat_at=row.now, expires_at=row.now + timedelta(seconds=lease_seconds)))


def mark_failed(engine: sa.Engine, run_id: str, name: str = RUN_LOCK_NAME) -> None:
    """The run failed: its lock is freed as soon as none of its steps runs any more."""
    with engine.begin() as conn:
        conn.execute(lock_table.update().where(
            lock_table.c.name == name, lock_table.c.run_id == run_id).values(failed=True))


def release(engine: sa.Engine, run_id: str, name: str = RUN_LOCK_NAME) -> None:
    """Free the lock if `run_id` holds it (never another run's)."""
    with engine.begin() as conn:
        conn.execute(_free(name).where(lock_table.c.run_id == run_id))


def _free(name: str) -> sa.Update:
    return lock_table.update().where(lock_table.c.name == name).values(
        run_id=None, holder=None, pid=None, pid_scope=None, active_steps=0, failed=False,
        acquired_at=None, heartbeat_at=None, expires_at=None)


def current_holder(engine: sa.Engine, name: str = RUN_LOCK_NAME) -> Holder | None:
    """Who holds the lock now (an expired lease still shows until someone takes it)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(lock_table).where(lock_table.c.name == name)).one_or_none()
    if row is None or row.run_id is None:
        return None
    return Holder(row.run_id, row.holder, row.acquired_at, row.expires_at)


@contextmanager
def keep_alive(engine: sa.Engine, claimant: Claimant, lease_seconds: float,
               name: str = RUN_LOCK_NAME) -> Iterator[None]:
    """Refresh the lease from a background thread for the block (a step's run time), a
    few times per lease so a slow refresh never lets it lapse."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_seconds / 4):
            try:
                refresh(engine, claimant, lease_seconds, name)
            except sa.exc.SQLAlchemyError:
                continue  # a brief outage: the lease outlives a few missed beats

    thread = threading.Thread(target=beat, name=f"run-lock-{claimant.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
