"""`make bench`: every SPEC 10 line, each a ratio measured within one run, on the path users
run with default settings, printed through benchmarks/verdict.py (`PASS`/`FAIL`/`info`).

    python -m benchmarks.run            # 200k rows (100k for the peak-RSS baseline)
    python -m benchmarks.run --large    # and 1M rows; peak RSS 1M vs 100k
    python -m benchmarks.run --quick    # 20k rows (10k), a smoke run
    python -m benchmarks.run --only outbox   # sections whose name contains a word

A section is a name and a function of (servers, scale) giving its lines; add one to
SECTIONS. A section that raises prints a FAIL line and the others still run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from benchmarks import bench_engine, bench_fixed, bench_outbox, bench_reconcile, bench_repair
from benchmarks.servers import BenchServers, bench_servers


@dataclass(frozen=True, slots=True)
class Scale:
    """The sizes of one `make bench`, from its flags."""

    quick: bool
    large: bool

    @property
    def rows(self) -> tuple[int, ...]:
        """Table sizes the full scan, window and row-by-row lines are measured at."""
        if self.quick:
            return (20_000,)
        return (200_000, 1_000_000) if self.large else (200_000,)

    @property
    def rss_small(self) -> int:
        """The size peak RSS is compared against (the largest of `rows` vs this)."""
        return 10_000 if self.quick else 100_000

    @property
    def messages(self) -> int:
        if self.quick:
            return 10_000
        return 100_000 if self.large else 30_000


Section = tuple[str, Callable[[BenchServers, Scale], Iterable[str]]]

SECTIONS: list[Section] = [
    ("full scan, hourly window, peak RSS, row by row (CLI and multiprocess job)",
     lambda servers, scale: bench_reconcile.run(servers, scale.rows, scale.rss_small)),
    ("outbox delivery through the job",
     lambda servers, scale: bench_outbox.run(servers, scale.messages)),
    ("bulk repair through the job",
     lambda servers, scale: bench_repair.run(servers, quick=scale.quick)),
    ("engine CPU, rows fed from memory", lambda servers, scale: bench_engine.run(scale.quick)),
    ("fixed cost of one run", lambda servers, scale: bench_fixed.run(servers, scale.quick)),
]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def run_section(name: str, lines: Callable[[], Iterable[str]]) -> bool:
    """Prints the section's lines as they come and its elapsed time; False if it raised."""
    print(f"== {name} ({load()})", flush=True)
    started = time.perf_counter()
    ok = True
    try:
        for line in lines():
            print(line, flush=True)
    except Exception as error:  # one broken section must not hide the others' lines
        traceback.print_exc()
        print(f"FAIL section '{name}': {type(error).__name__}: {error}", flush=True)
        ok = False
    print(f"-- {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="20k rows: a smoke run")
    sizes.add_argument("--large", action="store_true", help="also 1M rows (tens of minutes)")
    parser.add_argument("--only", action="append", metavar="WORD",
                        help="run the sections whose name contains WORD")
    args = parser.parse_args(argv)
    scale = Scale(quick=args.quick, large=args.large)
    chosen = [(name, measure) for name, measure in SECTIONS
              if not args.only or any(word in name for word in args.only)]
    started = time.perf_counter()
    with bench_servers() as servers:
        ok = [run_section(name, lambda m=measure: m(servers, scale))  # type: ignore[misc]
              for name, measure in chosen]
    print(f"== done in {time.perf_counter() - started:.0f} s ({load()})", flush=True)
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
