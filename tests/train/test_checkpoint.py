"""load_checkpoint: a checkpoint that cannot be read is one error naming the file and the fixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_cl.train.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint


def test_a_missing_checkpoint_is_none_and_a_saved_one_loads_back(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "none.pt") is None
    path = atomic_torch_save({"epoch": 1, "extra": {"run_id": "abc"}}, tmp_path / "ck.pt")
    state = load_checkpoint(path)
    assert state is not None and state["epoch"] == 1 and state["extra"] == {"run_id": "abc"}


@pytest.mark.parametrize("cut", ["empty", "head", "half", "tail", "garbage", "not_a_checkpoint"])
def test_an_unreadable_checkpoint_names_the_file_and_both_fixes(tmp_path: Path, cut: str) -> None:
    """torch.load raised EOFError, RuntimeError, OSError or UnpicklingError by where the file was cut."""
    good = atomic_torch_save({"epoch": 1, "model": {"w": torch.zeros(1000)}}, tmp_path / "good.pt").read_bytes()
    path = tmp_path / "ck.pt"
    content = {"empty": b"", "head": good[:10], "half": good[: len(good) // 2], "tail": good[:-10],
               "garbage": b"garbage" * 100}
    if cut == "not_a_checkpoint":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content[cut])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(f"the checkpoint {path} of an interrupted run with this config cannot be read (")
    assert message.endswith("; delete it to train from the first epoch, or rerun with --set train.resume=false "
                            "(its first epoch replaces it)")
