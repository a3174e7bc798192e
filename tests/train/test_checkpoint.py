"""load_checkpoint: a checkpoint that cannot be read is one error naming the file and the fixes;
checkpoint_lock: one live process per checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import torch

from recsys_cl.train.checkpoint import (
    CheckpointError,
    CheckpointInUseError,
    atomic_torch_save,
    checkpoint_lock,
    load_checkpoint,
    lock_path,
)


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


def test_a_checkpoint_held_by_another_process_is_refused_naming_it_and_free_once_it_dies(
    tmp_path: Path, hold_checkpoint,  # type: ignore[no-untyped-def]
) -> None:
    """Two runs of one config shared its checkpoint: the second resumed from the first's latest epoch."""
    ckpt = tmp_path / "ck" / "key.pt"
    holder = hold_checkpoint(ckpt)
    with pytest.raises(CheckpointInUseError) as info:
        with checkpoint_lock(ckpt):
            pytest.fail("a second holder got the lock")
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"another process is training this config on this data with the checkpoint {ckpt} "
                              f"(pid {holder.pid} on {socket.gethostname()}, since ")
    assert message.endswith("Wait for it to finish or stop it, or set another train.checkpoint_dir to train a "
                            "separate copy alongside it")
    holder.send_signal(signal.SIGKILL)  # a killed run leaves its lock file, but the kernel drops the lock
    holder.wait()
    assert lock_path(ckpt).exists()
    with checkpoint_lock(ckpt) as lock:  # so it can be rerun at once
        assert lock == lock_path(ckpt) and f"pid {os.getpid()} " in lock.read_text()
    assert not lock.exists(), "a released lock leaves no file behind"


def test_a_lock_is_reentrant_in_its_thread_only(tmp_path: Path) -> None:
    ckpt = tmp_path / "key.pt"
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with checkpoint_lock(ckpt):
                pass
        except BaseException as e:
            errors.append(e)

    with checkpoint_lock(ckpt):
        with checkpoint_lock(ckpt):  # the pipeline holds it, run_two_tower takes it again
            pass
        assert lock_path(ckpt).exists(), "still held by the outer block"
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], CheckpointInUseError)
    assert not lock_path(ckpt).exists()


def test_a_lock_on_a_file_its_holder_deleted_is_taken_again_on_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that opened the lock file just before its holder released (and deleted) it must not
    count the lock on the deleted file as held: a third run would lock a new file alongside it."""
    from recsys_cl.train import checkpoint

    ckpt = tmp_path / "key.pt"
    lock = lock_path(ckpt)
    real_flock = checkpoint.fcntl.flock
    calls: list[int] = []

    def flock_after_the_holder_left(fd: int, op: int) -> None:
        if not calls:  # the previous holder deletes the file between our open and our flock
            lock.unlink()
        calls.append(fd)
        real_flock(fd, op)

    lock.write_text("pid 1 on elsewhere\n")
    monkeypatch.setattr(checkpoint.fcntl, "flock", flock_after_the_holder_left)
    with checkpoint_lock(ckpt):
        assert len(calls) == 2, "the lock was taken again, on the file now at the path"
        assert lock.read_text().startswith(f"pid {os.getpid()} ")


def test_the_folders_a_lock_created_are_removed_with_it_unless_they_hold_a_checkpoint(tmp_path: Path) -> None:
    """A run that stopped before its first epoch (a tracking error) left an empty train.checkpoint_dir."""
    with checkpoint_lock(tmp_path / "runs" / "ck" / "key.pt"):
        assert (tmp_path / "runs" / "ck").is_dir()
    assert list(tmp_path.iterdir()) == []
    with checkpoint_lock(tmp_path / "runs" / "ck" / "key.pt"):
        atomic_torch_save({"epoch": 1}, tmp_path / "runs" / "ck" / "key.pt")  # killed after epoch 1
    assert [p.name for p in (tmp_path / "runs" / "ck").iterdir()] == ["key.pt"]


@pytest.mark.parametrize("cut", ["garbage", "half"])
def test_a_damaged_model_pt_names_the_file_and_not_torchs_weights_only_advice(tmp_path: Path, cut: str) -> None:
    """torch's message for a garbage file advises weights_only=False ('can result in arbitrary code
    execution'); the file is damaged, and the fix is to fetch or train the model again."""
    from recsys_cl.config import RunConfig, load_config
    from recsys_cl.data.io import load_click_log
    from recsys_cl.features.spec import build_feature_spec
    from recsys_cl.towers.two_tower import build_two_tower
    from recsys_cl.train.checkpoint import load_model_dir, save_model_dir

    data = Path(__file__).parents[1] / "fixtures" / "ml-100k"
    cfg = load_config(None, RunConfig, overrides=[f"data.path={data}", "model.embedding_dim=4",
                                                  "user_tower.history_length=2"])
    log = load_click_log(cfg.data)
    spec = build_feature_spec(log.clicks, log.items)
    model_dir = save_model_dir(tmp_path / "model", build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower),
                               spec, cfg)
    weights = model_dir / "model.pt"
    weights.write_bytes(b"garbage" * 100 if cut == "garbage" else weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        load_model_dir(model_dir)
    message = str(info.value)
    assert message.startswith(f"{weights} cannot be read as model weights ("), message
    assert "damaged" in message and "weights_only" not in message and "\n" not in message and len(message) < 400
