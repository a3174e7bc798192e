"""pipelines.clean_cache: lists by default, deletes with --yes, reads the folders from the config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipelines import clean_cache

DAY = 86400.0


def _old(path: Path, days: float, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - days * DAY
    os.utime(path, (t, t))
    return path


def test_lists_then_deletes_with_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = _old(tmp_path / "cache" / f"text-{'a' * 20}.npy", 40, 3 * 2**20)
    ckpt = _old(tmp_path / "ckpt" / f"{'0' * 16}.pt", 10, 1000)
    args = ["--set", f"item_tower.cache_dir={tmp_path / 'cache'}", "--set", f"train.checkpoint_dir={tmp_path / 'ckpt'}",
            "--summary-json", str(tmp_path / "clean.json")]

    summary = clean_cache.main(args)
    out = capsys.readouterr().out
    assert f"3.0 MB    40.0 days  content features  {entry}" in out
    assert "would remove: 1 files, 3.0 MB; rerun with --yes to delete them" in out
    assert entry.exists() and ckpt.exists()
    assert json.loads((tmp_path / "clean.json").read_text()) == summary
    assert summary["deleted"] is False and [r["path"] for r in summary["removed"]] == [str(entry)]

    clean_cache.main([*args, "--older-than-days", "7", "--yes"])
    out = capsys.readouterr().out
    assert "removed: 2 files, 3.0 MB\n" in out
    assert not entry.exists() and not ckpt.exists()


@pytest.mark.parametrize("days", ["-1", "nan", "inf", "week"])
def test_a_bad_age_is_refused(days: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        clean_cache.main(["--older-than-days", days])
    assert e.value.code == 2
    assert "--older-than-days: expected a number of days >= 0" in capsys.readouterr().err
