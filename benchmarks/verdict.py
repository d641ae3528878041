"""One SPEC 10 line as `make bench` prints it: what was measured, its target, PASS/FAIL.

Every benchmark module prints its targets through `verdict`, so the lines read alike and a
reader (or a script) can find every result with `grep -E '^(PASS|FAIL)'`."""

from __future__ import annotations


def verdict(label: str, value: float, target: float, *, at_most: bool = False,
            unit: str = "x", digits: int = 2) -> str:
    """`PASS full scan, CLI [200000 rows]: 0.83x (target >= 0.8)`; `at_most` for
    ceilings (memory, a window's share of the full scan)."""
    ok = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return (f"{'PASS' if ok else 'FAIL'} {label}: {value:.{digits}f}{unit} "
            f"(target {sign} {target:g}{unit})")


def info(label: str, text: str) -> str:
    """A figure printed for information (no target on this path)."""
    return f"info {label}: {text}"
