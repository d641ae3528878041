"""`make bench`: every benchmark, each printing ratios measured within one run (SPEC 10).

    python -m benchmarks.run [--quick]      # --quick: 20k rows / 10k messages, for a smoke run
"""

from __future__ import annotations

import argparse
import time

from benchmarks import bench_orchestration, bench_outbox, bench_reconcile
from benchmarks.servers import bench_servers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, minutes not tens")
    args = parser.parse_args(argv)
    sizes = (20_000,) if args.quick else (100_000, 1_000_000)
    messages = 10_000 if args.quick else 100_000
    started = time.perf_counter()
    with bench_servers() as servers:
        print("== reconcile (SPEC 10: a, b, c, d)", flush=True)
        for line in bench_reconcile.run(servers, sizes):
            print(line, flush=True)
        print("== outbox delivery", flush=True)
        for line in bench_outbox.run(servers, messages):
            print(line, flush=True)
    print("== orchestration", flush=True)
    bench_orchestration.main(["--clients", "500" if args.quick else "2000"])
    print(f"== done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
