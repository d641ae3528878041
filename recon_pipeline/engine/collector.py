"""The cyclic garbage collector during a scan.

A scan allocates a few container objects per row and document (rows, decoded documents,
their values) and keeps a batch or two of them alive in the read-ahead queues. Under the
collector's default first threshold (700 allocations) that makes thousands of young
collections, and enough survivors to start full collections, each of which walks every
object the process holds: Dagster and the code location are hundreds of thousands of
them. At 200k rows that was about a second of a 9.5 s chunk (benchmarks/PROFILE.md).

During a scan the first threshold is raised, so the collector runs a hundred times less
often and collects the same garbage: rows and documents hold no reference cycles, and
what is left for it stays bounded by the threshold (objects, not rows read).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SCAN_THRESHOLD = 100_000  # young allocations between collections during a scan

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] = (0, 0, 0)


@contextmanager
def fewer_collections(threshold: int = SCAN_THRESHOLD) -> Iterator[None]:
    """The collector's first threshold at least `threshold` for the block; the setting
    before it comes back when the last block open in this process ends (steps of one
    process may overlap on threads)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()  # type: ignore[assignment]
            gc.set_threshold(max(threshold, _saved[0]), *_saved[1:])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
