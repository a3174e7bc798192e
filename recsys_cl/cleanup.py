"""Prune what training leaves on disk and nothing reads any more (``python -m pipelines.clean_cache``).

Two folders grow without limit:

* ``item_tower.cache_dir``: frozen content features, ``<text|image>-<20 hex>.npy``
  (:mod:`recsys_cl.towers.content`). A changed encoder, item table or encoding code writes a new
  entry and never reads the old one again. A cache hit refreshes the file's modification time, so
  an entry's age is the time since a run last used it.
* ``train.checkpoint_dir``: ``<16 hex>.pt``, the last epoch of a run that did not finish
  (:func:`recsys_cl.experiment.checkpoint_path`). Only a rerun with the same config and data resumes
  it; after a changed config or click log it is never read again. A training run rewrites its
  checkpoint every epoch, so its age is the time since the run's last epoch.

:func:`prune` lists (and with ``delete=True`` removes) the files of those two kinds older than a
number of days, and the temp files that killed writers left beside them
(``.<name>.tmp-<pid>-<hex>-<host>``, :func:`recsys_cl.io_atomic.write_file_atomically`). It never
removes:

* a checkpoint whose lock a live run holds (:func:`recsys_cl.train.checkpoint.checkpoint_lock`): the
  deletion itself happens under that lock, so a run cannot start on the file as it goes;
* a temp file whose writer is alive on this host (a write in progress);
* anything newer than the cut-off (which also protects writers on other hosts of a shared folder:
  their temp files are as new as their last write), and any file not named as above (no folder is
  entered, no link followed).

A cache entry has no lock: a run that reads it as it is deleted either holds it open already (and
reads it whole) or finds it gone and encodes the items again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from recsys_cl.io_atomic import unfinished_write, writer_alive
from recsys_cl.train.checkpoint import LOCK_SUFFIX, CheckpointInUseError, checkpoint_lock, lock_holder

CACHE_FILE = re.compile(r"(?:text|image)-[0-9a-f]{20}\.npy")
"""A content-feature cache entry (``towers.content._cache_key`` + ``.npy``)."""
CHECKPOINT_FILE = re.compile(r"[0-9a-f]{16}\.pt")
"""A training checkpoint (``experiment.checkpoint_path``)."""
DAY_S = 86400.0


@dataclass(frozen=True)
class Leftover:
    """One file :func:`prune` removes (or, in a dry run, would remove)."""

    path: Path
    kind: str
    """``"content features"``, ``"checkpoint"``, ``"checkpoint lock"`` (of a run killed before
    its first epoch) or ``"unfinished write"`` (a killed writer's temp file)."""
    size: int
    """Bytes."""
    age_days: float
    """Days since the file was last written (a cache entry: last used)."""


@dataclass
class PruneReport:
    removed: list[Leftover] = field(default_factory=list)
    """Old enough and not in use: deleted, or, in a dry run, what would be deleted."""
    kept: list[tuple[Path, str]] = field(default_factory=list)
    """Old enough but kept, with why: held by a live process (which one), or the deletion failed."""

    @property
    def size(self) -> int:
        """Bytes of :attr:`removed`."""
        return sum(f.size for f in self.removed)


def prune(
    cache_dir: str | Path | None,
    checkpoint_dir: str | Path | None,
    older_than_days: float,
    delete: bool = False,
    now: float | None = None,
) -> PruneReport:
    """The cache entries, checkpoints and dead writers' temp files in the two folders (None or a
    missing folder: skipped) last written more than ``older_than_days`` days before ``now``
    (default: the current time), minus those in use (:attr:`PruneReport.kept`); with ``delete``, they are removed.

    Raises:
        ValueError: ``older_than_days`` is negative or not a number.
    """
    if not older_than_days >= 0:
        raise ValueError(f"older_than_days must be a number >= 0, got {older_than_days}")
    now = time.time() if now is None else now
    report = PruneReport()
    for folder, pattern in ((cache_dir, CACHE_FILE), (checkpoint_dir, CHECKPOINT_FILE)):
        if folder is None or not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).iterdir()):
            kind = _kind(path.name, pattern)
            if kind is None or path.is_symlink() or not path.is_file():
                continue
            if kind == "checkpoint lock" and path.with_name(path.name.removesuffix(LOCK_SUFFIX)).exists():
                continue  # goes with its checkpoint, under the same lock
            try:
                _prune_one(path, kind, now, older_than_days, delete, report)
            except OSError as e:  # another user's file in a shared folder, a read-only disk: the rest goes on
                report.kept.append((path, f"cannot be removed: {e.strerror or e}"))
    return report


def _kind(name: str, pattern: re.Pattern[str]) -> str | None:
    if pattern.fullmatch(name):
        return "content features" if pattern is CACHE_FILE else "checkpoint"
    if pattern is CHECKPOINT_FILE and name.endswith(LOCK_SUFFIX) and pattern.fullmatch(name.removesuffix(LOCK_SUFFIX)):
        return "checkpoint lock"
    temp = unfinished_write(name)
    if temp is not None and pattern.fullmatch(temp[0]):
        return "unfinished write"
    return None


def _prune_one(path: Path, kind: str, now: float, older_than_days: float, delete: bool, report: PruneReport) -> None:
    def old() -> Leftover | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        age = (now - st.st_mtime) / DAY_S
        return Leftover(path, kind, st.st_size, age) if age > older_than_days else None

    found = old()
    if found is None:
        return
    if kind in ("checkpoint", "checkpoint lock"):
        checkpoint = path.with_name(path.name.removesuffix(LOCK_SUFFIX))
        holder = lock_holder(checkpoint)  # this process's lock too, which checkpoint_lock would take again
        if delete and holder is None:
            try:
                with checkpoint_lock(checkpoint):  # taking it rewrites the lock file; releasing it deletes it
                    if kind == "checkpoint lock":
                        if checkpoint.exists():  # a run has written its first epoch since the listing
                            return
                    else:
                        again = old()  # a run may have written an epoch since the listing
                        if again is None:
                            return
                        found = again
                        checkpoint.unlink(missing_ok=True)
            except CheckpointInUseError:
                holder = lock_holder(checkpoint) or "a process that is just starting"
        if holder is not None:
            report.kept.append((path, f"in use, a run holds its lock: {holder}"))
            return
    elif kind == "unfinished write":
        writer = unfinished_write(path.name)
        if writer is not None and writer_alive(writer[1], path):
            report.kept.append((path, f"in use, being written by pid {writer[1].split('-')[0]}"))
            return
        if delete:
            path.unlink(missing_ok=True)
    elif delete:
        path.unlink(missing_ok=True)
    report.removed.append(found)
