"""Where each second of a full scan goes: `recon-pipeline run --full-scan --dry-run` on
seeded rows (benchmarks/seed.py), sampled by py-spy with idle time included, summarised
per thread and per phase (benchmarks/PROFILE.md).

    .venv/bin/pip install py-spy     # a measuring tool, not a dependency of the project
    .venv/bin/python -m benchmarks.profile_full_scan --rows 200000 --out /tmp/full-scan.txt

The samples are kept in py-spy's raw (collapsed-stack) format: speedscope.app and
flamegraph.pl read it as it is.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.paths import child_environment, console_script
from benchmarks.seed import ENTITY, seed_emails
from benchmarks.servers import bench_servers
from recon_pipeline.stores.mongo import create_client

RATE = 100  # samples per second and thread

# A sample belongs to the first phase whose pattern is found in its stack (py-spy's
# `function (file:line)` frames joined by ";"), in this order: the most specific first.
PHASES: list[tuple[str, str]] = [
    ("mismatch writes", r"insert_mismatches|_MismatchSink"),
    ("judge (compare, normalise)", r"judge \("),
    ("order keys", r"order_key \(|merge_key \(|merge_order \("),
    ("waiting for a read-ahead batch (the servers)", r"prefetched \("),
    ("merge and raw compare (diff_sorted; merge_join before)", r"merge_join \(|diff_sorted \("),
    ("planning", r"plan_chunks|plan_entity"),
    ("outbox retry", r"retry_outbox"),
    ("decide repairs", r"decide_repairs"),
    ("cleanup", r"clean_up"),
    ("report (write_report, printing it)", r"write_report|finish_report|print_outcome"),
    ("start_run (window, report row, MongoDB ping)", r"start_run"),
    ("mapping load", r"load_mapping"),
    ("reader blocked: the consumer is behind", r"put \([^;]*prefetch\.py"),
    ("MongoDB: our TargetRecords (records_of)", r"records_of \(|_batch_nodes \(|nodes_of \("),
    ("MongoDB: waiting for the server", r"recv_into|sendall"),
    ("MongoDB: BSON decode, cursor", r"pymongo/|bson/"),
    ("PostgreSQL: server and psycopg row decode", r"psycopg/"),
    ("PostgreSQL: SQLAlchemy rows, our stream_rows",
     r"stream_rows \(|stream_row_values \(|stream_batches \("),
    ("imports (Python, Dagster, ours)", r"_find_and_load"),
    ("Dagster execution (outside our ops)", r"/dagster/"),
]
_PATTERNS = [(name, re.compile(pattern)) for name, pattern in PHASES]


def phase_of(stack: str) -> str:
    if not stack:
        return "interpreter start and exit (no Python frame)"
    for name, pattern in _PATTERNS:
        if pattern.search(stack):
            return name
    return "other"


def summarise(samples: Path) -> str:
    """Seconds per thread and phase: the main thread (it lives as long as the process,
    so it has the most samples), then the read-ahead threads of all chunks together."""
    by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, _, frames = stack.partition(";")
        by_thread[thread][phase_of(frames)] += int(count)
    totals = {thread: sum(c.values()) for thread, c in by_thread.items()}
    main = max(totals, key=lambda t: totals[t])
    readers: Counter[str] = Counter()
    threads = 0
    for thread, phases in by_thread.items():
        if "recon-prefetch" in thread:
            readers.update(phases)
            threads += 1
    lines = [f"main thread: {totals[main] / RATE:.1f} s"]
    lines += [f"  {n / RATE:7.1f} s  {phase}" for phase, n in by_thread[main].most_common()]
    lines.append(f"read-ahead threads ({threads}, two per chunk, summed): "
                 f"{sum(readers.values()) / RATE:.1f} s")
    lines += [f"  {n / RATE:7.1f} s  {phase}" for phase, n in readers.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("full-scan-profile.txt"))
    parser.add_argument("--summarise", type=Path, metavar="SAMPLES",
                        help="only summarise a profile recorded before")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return
    py_spy = shutil.which("py-spy") or str(Path(console_script()).parent / "py-spy")
    with bench_servers() as servers, servers.fresh_database() as (engine, url, db_name):
        client = create_client(servers.mongodb_url)
        try:
            seed_emails(engine, client[db_name], 1, args.rows)
        finally:
            client.close()
        command = [py_spy, "record", "--idle", "--threads", "--rate", str(RATE),
                   "--format", "raw", "-o", str(args.out), "--",
                   console_script(), "run", "--full-scan", "--dry-run", "--json",
                   "--entity", ENTITY]
        print(" ".join(command[:command.index("--") + 1]) + " recon-pipeline run "
              f"--full-scan --dry-run --json --entity {ENTITY}", flush=True)
        started = time.perf_counter()
        process = subprocess.Popen(command, env=child_environment(servers.target(url, db_name)),
                                   stdout=subprocess.DEVNULL)
        process.wait()
        print(f"wall time {time.perf_counter() - started:.1f} s (py-spy included)", flush=True)
        if process.returncode not in (0, 1):
            raise RuntimeError(f"profiled run exited {process.returncode}")
    print(summarise(args.out), flush=True)


if __name__ == "__main__":
    main()
