"""Preloaded into a test's forkserver: writes the file named by RECON_TEARDOWN_PROBE when
the forkserver's interpreter tears down (it is not meant to)."""

import atexit
import os
from pathlib import Path


def _mark() -> None:
    Path(os.environ["RECON_TEARDOWN_PROBE"]).write_text("the forkserver tore down\n")


atexit.register(_mark)
