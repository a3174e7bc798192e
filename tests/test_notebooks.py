"""Every notebook in notebooks/ runs top to bottom (as a percent-format script) on a tiny fixture."""

import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder lands here
    monkeypatch.setenv("RECSYS_CL_DATA", str(ROOT / "tests" / "fixtures" / "ml-100k"))
    monkeypatch.setenv("RECSYS_CL_EPOCHS", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    if path.name.startswith("01_"):
        assert "two-tower test:" in out and "EASE test:" in out
