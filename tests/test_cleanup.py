"""prune: old cache entries, orphaned checkpoints and dead writers' temp files go; anything in use,
recent or not ours stays."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from recsys_cl.cleanup import CHECKPOINT_FILE, prune
from recsys_cl.config import RunConfig
from recsys_cl.experiment import checkpoint_path
from recsys_cl.io_atomic import unfinished_write, write_file_atomically
from recsys_cl.train.checkpoint import checkpoint_lock, lock_path

DAY = 86400.0
DEAD_PID = 999999999  # no such process
KEY = "0123456789abcdef"


def _file(path: Path, age_days: float, size: int = 10) -> Path:
    path.write_bytes(b"x" * size)
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    cache, ckpts = tmp_path / "cache", tmp_path / "checkpoints"
    cache.mkdir()
    ckpts.mkdir()
    return cache, ckpts


def test_old_entries_are_listed_then_removed_and_the_rest_kept(folders: tuple[Path, Path]) -> None:
    cache, ckpts = folders
    old = {
        _file(cache / f"text-{'a' * 20}.npy", 40, size=1000),
        _file(cache / f".image-{'b' * 20}.npy.tmp-{DEAD_PID}-0123abcd", 40),  # a killed writer's
        _file(ckpts / f"{KEY}.pt", 40, size=5000),
        _file(lock_path(ckpts / f"{KEY}.pt"), 40),  # left by a SIGKILL: goes with its checkpoint
        _file(lock_path(ckpts / f"{'1' * 16}.pt"), 40),  # a run killed before its first epoch
        _file(ckpts / f".{'2' * 16}.pt.tmp-{DEAD_PID}-0123abcd", 40),
    }
    kept = {
        _file(cache / f"text-{'c' * 20}.npy", 2),  # recent
        _file(ckpts / f"{'3' * 16}.pt", 2),
        _file(cache / f".text-{'d' * 20}.npy.tmp-{os.getppid()}-0123abcd", 40),  # its writer is alive
        _file(cache / "notes.txt", 40),  # not ours
        _file(cache / f"text-{'e' * 19}.npy", 40),
        _file(ckpts / "best.pt", 40),
        _file(ckpts / f".other.tmp-{DEAD_PID}-0123abcd", 40),
    }
    (cache / f"image-{'f' * 20}.npy").symlink_to(cache / "notes.txt")  # links are not followed
    (ckpts / f"{'4' * 16}.pt").mkdir()  # nor folders entered

    listed = prune(cache, ckpts, older_than_days=30)
    removable = old - {lock_path(ckpts / f"{KEY}.pt")}
    assert {f.path for f in listed.removed} == removable
    assert listed.size == 1000 + 5000 + 10 * 3
    assert all(39.9 < f.age_days < 40.1 for f in listed.removed)
    assert listed.kept == [
        (cache / f".text-{'d' * 20}.npy.tmp-{os.getppid()}-0123abcd", f"in use, being written by pid {os.getppid()}")]
    assert all(p.exists() for p in old | kept), "a dry run deletes nothing"

    done = prune(cache, ckpts, older_than_days=30, delete=True)
    assert {f.path for f in done.removed} == removable
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in kept)


def test_a_checkpoint_locked_by_a_running_training_is_kept(
    folders: tuple[Path, Path], hold_checkpoint,  # type: ignore[no-untyped-def]
) -> None:
    """However old its last epoch, a checkpoint whose run is alive is that run's to resume or delete."""
    _, ckpts = folders
    ckpt = _file(ckpts / f"{KEY}.pt", 40)
    holder = hold_checkpoint(ckpt)
    for delete in (False, True):
        report = prune(None, ckpts, older_than_days=30, delete=delete)
        assert report.removed == []
        ((path, why),) = report.kept
        assert path == ckpt and why.startswith(f"in use, a run holds its lock: pid {holder.pid} on ")
    assert ckpt.exists() and lock_path(ckpt).exists()
    holder.kill()  # the kernel drops its lock: the checkpoint is an orphan now
    holder.wait()
    assert [f.path for f in prune(None, ckpts, older_than_days=30, delete=True).removed] == [ckpt]
    assert not ckpt.exists() and not lock_path(ckpt).exists()


def test_a_checkpoint_this_process_holds_is_kept(folders: tuple[Path, Path]) -> None:
    """checkpoint_lock is re-entrant in its thread: taken to delete, it was this process's own run's."""
    _, ckpts = folders
    ckpt = _file(ckpts / f"{KEY}.pt", 40)
    with checkpoint_lock(ckpt):
        report = prune(None, ckpts, older_than_days=30, delete=True)
        assert report.removed == [] and ckpt.exists()
        ((path, why),) = report.kept
        assert path == ckpt
        assert why.startswith(f"in use, a run holds its lock: pid {os.getpid()} on {socket.gethostname()}")


def test_a_file_that_cannot_be_deleted_is_reported_and_the_rest_goes_on(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, _ = folders
    stuck, other = (_file(cache / f"text-{c * 20}.npy", 40) for c in "ab")
    unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(1, "Operation not permitted")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    report = prune(cache, None, older_than_days=30, delete=True)
    assert report.kept == [(stuck, "cannot be removed: Operation not permitted")]
    assert [f.path for f in report.removed] == [other] and not other.exists()


def test_missing_folders_are_nothing_to_prune_and_a_negative_age_is_refused(tmp_path: Path) -> None:
    report = prune(tmp_path / "none", None, older_than_days=1, delete=True)
    assert report.removed == [] and report.kept == []
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="older_than_days must be a number >= 0"):
            prune(tmp_path, tmp_path, older_than_days=bad)


def test_the_patterns_match_the_names_the_writers_use(tmp_path: Path) -> None:
    """A renamed checkpoint or temp file would make prune skip it silently, forever (cache entries:
    tests/towers/test_content.py)."""
    assert CHECKPOINT_FILE.fullmatch(checkpoint_path(RunConfig(), "fingerprint").name)
    temps: list[str] = []
    write_file_atomically(tmp_path / f"{KEY}.pt", lambda tmp: temps.append(tmp.name) or tmp.write_bytes(b""))
    assert unfinished_write(temps[0])[0] == f"{KEY}.pt" and unfinished_write(temps[0])[1].startswith(f"{os.getpid()}-")
    assert unfinished_write(f"{KEY}.pt") is None and unfinished_write(".x.tmp-abc-0123") is None
