"""Run a command; write its wall time and its own peak RSS (JSON) to a file.

    python -m benchmarks.peak_rss OUT.json -- COMMAND [ARG...]

Linux carries `ru_maxrss` across exec: a child forked from a process that once held
more memory reports at least that process's peak. This wrapper imports only the
standard library, so the process it forks holds a few MB when it execs the command, and
the child's `ru_maxrss` from `wait4` is the command's own peak (exact, nothing polled).
The command's stdout and stderr pass through; the wrapper exits with the command's code.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, command = argv[0], argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become the command
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as file:
        json.dump({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
                   "exit_code": code}, file)
    return code if code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
