"""Checkpoints (resume after a crash) and model directories (the trained artifact).

A model directory holds ``model.pt`` (state dict), ``config.yaml`` (the run config) and
``features/`` (vocabularies and item features): enough to rebuild both towers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from recsys_cl.config import RunConfig, dump_config, load_config
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.towers.two_tower import TwoTower, build_two_tower


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    from recsys_cl.io_atomic import write_file_atomically  # (io_atomic imports pyarrow)

    return write_file_atomically(path, lambda tmp: torch.save(obj, tmp))


class CheckpointError(Exception):
    """A training checkpoint exists but cannot be read; the message names the file and the fixes."""


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state :func:`recsys_cl.train.loop.fit` saved at ``path``, or None when there is no file.

    Raises:
        CheckpointError: the file cannot be read (truncated, overwritten, unreadable). It is not set
            aside to train afresh: a read error may be passing (a network disk, permissions) and the
            file hold epochs of work, so a person decides, with the two fixes the message names.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises EOFError, RuntimeError, OSError, UnpicklingError, ...
        raise CheckpointError(_unreadable(path, _load_error(e))) from e
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(_unreadable(path, f"it holds a {type(state).__name__}, not a training checkpoint"))
    return state


class CheckpointInUseError(CheckpointError):
    """Another live process holds the lock of this checkpoint (:func:`checkpoint_lock`)."""


LOCK_SUFFIX = ".lock"
_held: dict[tuple[str, int], list[Any]] = {}
"""``(lock path, thread id) -> [fd, depth, folders it created]``: the locks this process holds, so the
same thread may take one again (a pipeline holds it around ``resumable_run_id``, ``run_two_tower``
takes it again)."""


def lock_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.lock`` beside the checkpoint ``<key>.pt``: ``<key>.pt.lock``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + LOCK_SUFFIX)


@contextlib.contextmanager
def checkpoint_lock(checkpoint: str | Path) -> Iterator[Path]:
    """Hold the checkpoint ``checkpoint`` for this process while the block runs; yields the lock file.

    Two runs with the same config on the same data share one checkpoint file: without the lock, a
    second run started while the first is alive (a double launch, a scheduler's retry) resumes from
    the first's latest epoch into the first's MLflow run, both then log the same epochs and register a
    model each, and the first to finish deletes the file under the other. The lock is an exclusive,
    non-blocking ``flock`` on ``<checkpoint>.lock``, so the second run fails at once instead; the
    kernel drops it when the holder exits, however it dies (SIGKILL included), so a killed run can be
    rerun at once. The file records the holder (host, pid, start time) for the message and is deleted
    when the lock is released, with the folders taking it created if they are empty then (a run that
    fails before its first epoch leaves no empty ``train.checkpoint_dir``). Taken again by the same
    thread, it is held until the outermost block ends.

    Raises:
        CheckpointInUseError: another process (or thread) holds it; the message names the holder and the fixes.
    """
    lock = lock_path(checkpoint)
    key = (os.path.abspath(lock), threading.get_ident())
    if key in _held:
        _held[key][1] += 1
    else:
        created = [d for d in (lock.parent, *lock.parent.parents) if not d.exists()]
        _held[key] = [_acquire(lock, Path(checkpoint)), 1, created]
    try:
        yield lock
    finally:
        entry = _held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)  # while still held: a run that opens the old file next finds it replaced
            os.close(entry[0])
            for folder in entry[2]:  # deepest first; one holding a checkpoint or another run's lock stays
                try:
                    folder.rmdir()
                except OSError:
                    break


def lock_holder(checkpoint: str | Path) -> str | None:
    """Who holds :func:`checkpoint_lock` of ``checkpoint`` (``"pid 123 on host, since ..."``), or None
    when no process does; this process counts too when it holds the lock (which :func:`checkpoint_lock`
    would take again). Creates, writes and deletes nothing, unlike taking the lock: it tries a shared
    ``flock`` on an existing lock file and drops it at once (a run starting in that instant fails
    as if another held it, and can be started again)."""
    try:
        fd = os.open(lock_path(checkpoint), os.O_RDONLY)
    except FileNotFoundError:
        return None  # a holder keeps its lock file until it releases the lock
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "a process that is just starting"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire(lock: Path, checkpoint: Path) -> int:
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was just removed by a run that created it and ended
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise CheckpointInUseError(
                f"another process is training this config on this data with the checkpoint {checkpoint} "
                f"({holder or 'a process that is just starting'}); a second run would resume from and overwrite "
                "its epochs. Wait for it to finish or stop it, or set another train.checkpoint_dir to train a "
                "separate copy alongside it"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder deletes the file as it releases it: a lock on the deleted file guards nothing
            current = os.stat(lock)
            mine = os.fstat(fd)
            same = (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
    return fd


def _load_error(e: Exception) -> str:
    """What ``torch.load`` said, in one short line: the error type and its first sentence (torch goes on
    with advice that fits a trusted file only, e.g. to retry with ``weights_only=False``)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0].split('. ')[0] if str(e) else 'no message'}"


def _unreadable(path: Path, reason: str) -> str:
    return (f"the checkpoint {path} of an interrupted run with this config cannot be read ({reason}); delete it "
            "to train from the first epoch, or rerun with --set train.resume=false (its first epoch replaces it)")


def save_model_dir(directory: str | Path, model: TwoTower, spec: FeatureSpec, cfg: RunConfig) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), d / "model.pt")
    (d / "config.yaml").write_text(dump_config(cfg))
    spec.save(d / "features")
    return d


def load_model_dir(directory: str | Path) -> tuple[TwoTower, FeatureSpec, RunConfig]:
    """Rebuild the two towers from a model directory written by :func:`save_model_dir`.

    Raises:
        FileNotFoundError: a file of the directory is missing.
        CheckpointError: ``model.pt`` cannot be read (damaged, truncated).
    """
    d = Path(directory)
    missing = [n for n in ("model.pt", "config.yaml", "features") if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{d} is not a recsys_cl model directory: missing {missing}; expected model.pt, "
            "config.yaml and features/ as written by pipelines.train_two_tower"
        )
    cfg = load_config(d / "config.yaml", RunConfig)
    spec = FeatureSpec.load(d / "features")
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    try:
        state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # EOFError, RuntimeError, UnpicklingError, ... by where the file is damaged
        raise CheckpointError(
            f"{d / 'model.pt'} cannot be read as model weights ({_load_error(e)}): the file is damaged or cut short "
            "(a copy or download that did not finish); fetch the model again, or retrain it"
        ) from e
    model.load_state_dict(state)
    model.eval()
    return model, spec, cfg
