"""pipelines.cli.configure_logging: the pipelines' log lines, without third-party start-up noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _stderr_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_faiss_loader_noise_is_held_back_and_our_info_lines_are_not() -> None:
    pytest.importorskip("faiss")
    code = ("import logging; {setup}; import faiss; "
            "logging.getLogger('recsys_cl.x').info('our line')")
    plain = _stderr_of(code.format(setup="logging.basicConfig(level=logging.INFO)"))
    assert "Could not load library" in plain or "Loading faiss" in plain  # what faiss says at INFO
    ours = _stderr_of(code.format(setup="from pipelines.cli import configure_logging; configure_logging()"))
    assert "faiss.loader" not in ours and "ModuleNotFoundError" not in ours
    assert "INFO recsys_cl.x: our line" in ours
