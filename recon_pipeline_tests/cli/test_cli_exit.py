"""The console script leaves the process at once when its command is done: everything
printed is delivered, the exit code is the command's, and the interpreter is not torn
down (an atexit hook, registered before it, does not run)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import atexit, sys
from pathlib import Path
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("torn down"))
from recon_pipeline.cli.main import entry
sys.argv = ["recon-pipeline", *sys.argv[2:]]
entry()
"""


def console(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / "teardown"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker), *argv],
                          capture_output=True, text=True, timeout=120)
    return done, marker


def test_help_is_printed_whole_and_the_process_ends_without_teardown(tmp_path: Path) -> None:
    done, marker = console(tmp_path, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: recon-pipeline")
    assert "embedded" in done.stdout  # the last commands listed made it out too
    assert not marker.exists()


@pytest.mark.parametrize(("argv", "code"), [(["no-such-command"], 2), (["run", "--bogus"], 2)])
def test_the_exit_code_is_the_commands(tmp_path: Path, argv: list[str], code: int) -> None:
    done, marker = console(tmp_path, *argv)
    assert done.returncode == code
    assert "usage: recon-pipeline" in done.stderr
    assert not marker.exists()
