"""Chunk progress on the CLI's stderr (stdout stays the report, or clean JSON): a `rich`
bar per chunk on a terminal, else the run log's own line (`ChunkProgress.line`) as it
comes, which the run already spaces out."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from recon_pipeline.engine.progress import ChunkProgress

TERMINAL_INTERVAL = 1.0  # seconds between a chunk's updates when a bar shows them
Show = Callable[[ChunkProgress], None]


@contextmanager
def progress_display(stream: TextIO | None = None) -> Iterator[tuple[Show, float | None]]:
    """(show, interval): feed `show` every `ChunkProgress`; ask the run for updates every
    `interval` seconds (None: the run's default)."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        def line(progress: ChunkProgress) -> None:
            print(progress.line(), file=stream, flush=True)

        yield line, None
        return
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rows  {task.fields[mismatches]:,} mismatches"),
                    TimeRemainingColumn(), console=Console(file=stream), transient=False)
    tasks: dict[str, TaskID] = {}

    def bar(progress: ChunkProgress) -> None:
        task = tasks.get(progress.chunk)
        if task is None:
            task = tasks[progress.chunk] = bars.add_task(
                progress.chunk, total=progress.total, mismatches=0)
        bars.update(task, completed=progress.rows, total=progress.total,
                    mismatches=progress.mismatches)

    with bars:
        yield bar, TERMINAL_INTERVAL
