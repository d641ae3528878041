"""`recon-pipeline embedded start|status|stop` on real processes."""

from pathlib import Path

import psutil
import pytest

from recon_pipeline.cli.main import main
from recon_pipeline.local import embedded


def test_embedded_start_status_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECON_EMBEDDED_HOME", str(tmp_path / "home"))
    assert main(["embedded", "start"]) == 0
    out = capsys.readouterr().out
    state = embedded.read_state(tmp_path / "home")
    assert state is not None
    pg_port = state.postgres.port
    assert f"DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:{pg_port}/recon" in out
    assert f"MONGODB_URL=mongodb://127.0.0.1:{state.mongodb.port}/" in out
    assert embedded.running(state)
    assert main(["embedded", "start"]) == 0  # reuses the running pair
    assert embedded.read_state(tmp_path / "home") == state
    capsys.readouterr()
    assert main(["embedded", "status"]) == 0
    assert "embedded servers running" in capsys.readouterr().out
    assert main(["embedded", "stop"]) == 0
    assert not psutil.pid_exists(state.mongodb.pid)
    assert not embedded.port_open(state.postgres.port)
    assert main(["embedded", "status"]) == 1
    assert "not running" in capsys.readouterr().out
