"""The forkserver a multiprocess run's step processes fork from (defs/executor.py): one
per run, started as the run starts and stopped when it ends. Started as a fork of the
run worker where that is safe (`fork_is_safe`), else as a new interpreter that imports
the preload itself."""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import threading
from collections.abc import Sequence
from contextlib import suppress
from multiprocessing import connection, resource_tracker, util
from typing import Any, NoReturn

# Dagster's multiprocess executor imports this one first in the forkserver (its own note:
# so that user code cannot break its pickling); the same list is given when we start it.
DAGSTER_FIRST = "dagster._core.executor.multiprocess"


def start_forkserver(preload: Sequence[str]) -> bool:
    """Start this process's forkserver now, with the preload Dagster's executor would give
    it at its first step, so that it is ready when the run's first step process is asked
    for. Returns whether it was forked from this process (`fork_forkserver`); otherwise it
    is a fresh interpreter that imports while the run's first steps run in the run worker
    (`ensure_running` does not wait for the imports; the first fork does)."""
    modules = [DAGSTER_FIRST, *(m for m in preload if m != DAGSTER_FIRST)]
    multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
    if fork_forkserver(modules):
        return True
    multiprocessing.forkserver.ensure_running()
    return False


# Threads a run worker may run when its run starts that hold nothing a fork's child uses:
# Dagster's watch for the run's termination (runs the code server starts) waits on a
# multiprocessing event, and multiprocessing's queue feeders (that run's events, sent to
# the code server) wait on their own queue, which a child given it rebuilds.
FORK_SAFE_THREADS = frozenset({"termination-handler", "QueueFeederThread"})


def fork_is_safe() -> bool:
    """Whether this process can fork: it runs on its main thread, and every other thread
    is one of FORK_SAFE_THREADS and Python knows of each (Linux's /proc/self/task counts
    them all); False where that cannot be told."""
    threads = threading.enumerate()
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    main = threading.main_thread()
    return (threading.current_thread() is main and tasks == len(threads)
            and all(t is main or t.name in FORK_SAFE_THREADS for t in threads))


def fork_forkserver(preload: Sequence[str]) -> bool:
    """Make this process's forkserver a fork of this process and return True, when it can
    fork (`fork_is_safe`); else start nothing and return False.

    A run worker has imported Dagster and the code location before its run starts; a
    forkserver started as a fresh interpreter spends 1.3 s importing them again, and the
    run's first step process waits for that (benchmarks/PROFILE.md). Forked, it has them at
    once and imports only what is left of `preload`. It is multiprocessing's own forkserver
    loop (`multiprocessing.forkserver.main`), reached by a fork instead of an exec, and the
    executor talks to it as to any forkserver.

    A fork copies the locks other threads hold at that moment, held, and nothing releases
    them in the copy: hence `fork_is_safe`. The fork also copies the run worker as it is
    when the run starts: its environment and imported modules (a spawned forkserver imports
    them as they are then), and its open connections, which the forkserver and its steps
    never use: `gc.freeze()` keeps a step's collector from finalizing an unreachable copy of
    one, which would close the run worker's end too."""
    if not fork_is_safe():
        return False
    server: Any = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    if server._forkserver_pid is not None:
        return False  # one is running: `ensure_running` keeps it
    resource_tracker.ensure_running()  # as `ensure_running` does, before the fork
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):  # type: ignore[attr-defined]
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        # multiprocessing's own flush before a fork: else each step writes what the
        # streams hold again as it exits
        util._flush_std_streams()  # type: ignore[attr-defined]
        pid = os.fork()
        if pid == 0:
            _serve_forks(listener.fileno(), alive_r, alive_w, preload)
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    return True


def _serve_forks(listener: int, alive_r: int, alive_w: int, preload: Sequence[str]) -> NoReturn:
    """The forked forkserver: Python's default signal handlers (a step inherits them, as from
    a fresh interpreter), then multiprocessing's loop until the run worker goes or stops it;
    it never returns into the run worker's stack, and leaves without running its exit
    hooks."""
    try:
        os.close(alive_w)  # the run worker's end: the loop ends when that closes
        gc.freeze()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        multiprocessing.forkserver.main(listener, alive_r, list(preload))
    finally:
        os._exit(0)


def forkserver_pid() -> int | None:
    """The process id of this process's forkserver, None if none runs."""
    pid: int | None = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    return pid


def stop_forkserver() -> None:
    """Stop this process's forkserver, if one runs: the next run starts its own.

    SIGTERM first: left to exit by itself, the forkserver tears down an interpreter that
    has imported Dagster and the code location (0.5 s at the end of every run, measured),
    and it holds nothing to flush: its steps have ended and report through their own
    processes."""
    server: Any = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    pid = server._forkserver_pid
    if pid is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    # A private method (CPython's own tests stop the server with it), on every 3.11; it
    # reaps the process.
    server._stop()
