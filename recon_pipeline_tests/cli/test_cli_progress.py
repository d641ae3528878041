"""How the CLI shows a run's `ChunkProgress`: the run log's line when stderr is not a
terminal, a `rich` bar per chunk when it is."""

import io

from recon_pipeline.cli.progress import TERMINAL_INTERVAL, progress_display
from recon_pipeline.engine.progress import ChunkProgress

RUNNING = ChunkProgress("clients_0", 5000, 20_000, False, 2, 1.0, False, 3.0)
DONE = ChunkProgress("clients_0", 20_000, 20_000, False, 4, 4.0, True, 0.0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_the_run_logs_lines_at_the_runs_pace() -> None:
    stream = io.StringIO()
    with progress_display(stream) as (show, interval):
        show(RUNNING)
        show(DONE)
    assert interval is None
    assert stream.getvalue().splitlines() == [RUNNING.line(), DONE.line()]


def test_a_terminal_gets_a_bar_per_chunk_updated_every_second() -> None:
    stream = Terminal()
    with progress_display(stream) as (show, interval):
        show(RUNNING)
        show(DONE)
    assert interval == TERMINAL_INTERVAL
    shown = stream.getvalue()
    assert "clients_0" in shown and "20000/20000" in shown and "4 mismatches" in shown
    assert "━" in shown and RUNNING.line() not in shown
