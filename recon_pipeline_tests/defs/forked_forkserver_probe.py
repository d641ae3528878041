"""Run as a process of its own, a run worker as the code server starts one: its main
thread, Dagster's termination watch and a multiprocessing queue's feeder. It starts a
run's forkserver as `MultiprocessRun` does, has one step forked from it, and prints what
it saw as JSON on its last line of stdout.

    python -m recon_pipeline_tests.defs.forked_forkserver_probe DIR

Before the forkserver starts, it leaves three things a fork copies: a module only it has
imported (`colorsys`), an unreachable object whose finalizer writes its process id to
DIR/finalized, and a line in its stdout buffer."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from typing import Any

from dagster._utils import start_termination_thread

from recon_pipeline.defs.forkserver import forkserver_pid, start_forkserver, stop_forkserver

BUFFERED = "written before the fork, flushed by no one"


class Finalized:
    """Unreachable once made (it refers to itself): the collector finalizes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.me = self

    def __del__(self) -> None:
        with self.path.open("a") as file:
            file.write(f"{os.getpid()}\n")


def step(connection: Any) -> None:
    """A step forked from the forkserver: collects, then says what it sees."""
    gc.collect()
    connection.send({"pid": os.getpid(), "parent": os.getppid(),
                     "colorsys": "colorsys" in sys.modules})
    connection.close()


def main(out: Path) -> None:
    start_termination_thread(multiprocessing.Event(), threading.Event())
    queue: multiprocessing.Queue[str] = multiprocessing.Queue()
    queue.put("an event for the code server")  # starts the queue's feeder thread
    assert queue.get(timeout=60) == "an event for the code server"
    import colorsys  # noqa: F401 - imported here only, not preloaded

    gc.disable()
    Finalized(out / "finalized")
    sys.stdout.write(BUFFERED + "\n")  # stdout is a pipe: block-buffered, so it stays
    threads = sorted(t.name for t in threading.enumerate())
    forked = start_forkserver(["json"])
    server = forkserver_pid()
    same_program = (Path(f"/proc/{server}/cmdline").read_bytes()
                    == Path("/proc/self/cmdline").read_bytes())
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=step, args=(sender,))
    process.start()
    seen = receiver.recv()
    process.join()
    stop_forkserver()
    gc.enable()
    gc.collect()  # the finalizer runs here, in this process
    print(json.dumps({"pid": os.getpid(), "threads": threads, "forked": forked,
                      "forkserver": server, "same_program": same_program, "step": seen}),
          flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
