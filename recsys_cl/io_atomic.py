"""Atomic replacement of a dated output partition: ``<root>/dt=YYYY-MM-DD/part-*.parquet + _SUCCESS``.

Everything is written into a hidden temp directory beside the target (same filesystem, so the final
rename is atomic), fsynced, and then swapped into place with one ``renameat2(RENAME_EXCHANGE)``
(Linux) so readers see either the old partition or the new one, never a mix. Where that call is
missing the swap falls back to two renames, and :func:`cleanup_stale` restores the old partition
if a run died between them.

Names starting with ``.`` are ignored by Spark, Hive and pyarrow datasets, so a half-written temp
directory is never visible. Temp names embed their writer (:func:`writer_tag`: pid and host); the
next run removes those whose writer is gone: by pid on this host; another host's (a folder shared
over NFS) only once untouched for :data:`FOREIGN_WRITER_S`, since its pid means nothing here.

Test hook: ``RECSYS_CL_TEST_SLEEP_BETWEEN_PARTS=<seconds>`` sleeps after each part file, so a test
can SIGKILL the writer mid-partition (``tests/pipelines/test_candidates_pipeline.py``); with
``--engine spark``, after each batch an executor scores (``tests/candidates/test_pipelines.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS"
SLEEP_HOOK_ENV = "RECSYS_CL_TEST_SLEEP_BETWEEN_PARTS"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputError(OSError):
    """The output directory cannot be written; the message names it and the fix."""


def partition_name(dt: str) -> str:
    return f"dt={dt}"


HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
"""This host, as temp names carry it (:func:`writer_tag`)."""
FOREIGN_WRITER_S = 24 * 3600.0
"""A temp path written by another host is left alone until untouched this long (seconds)."""


def writer_tag() -> str:
    """``<pid>-<8 hex random>-<8 hex host>``: names a temp path after the process writing it, so that
    later jobs can tell whether it is still being written (:func:`writer_alive`)."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{HOST_TAG}"


def writer_alive(tag: str, path: Path) -> bool:
    """Whether the writer named by ``tag`` (:func:`writer_tag`; temp names of earlier versions lack
    the host and count as this host's) may still be writing ``path``: on this host, this process or
    any live process with that pid (a reused pid keeps its files until it exits); on another host,
    until ``path`` was left untouched for :data:`FOREIGN_WRITER_S` (its pid cannot be checked from
    here, and a folder being written changes as its files are added). A tag that names no pid is
    never judged dead."""
    fields = tag.split("-")
    if not fields[0].isdigit():
        return True
    if len(fields) >= 3 and fields[2] != HOST_TAG:
        try:
            return time.time() - path.lstat().st_mtime < FOREIGN_WRITER_S
        except FileNotFoundError:
            return True  # gone already: nothing to remove
    pid = int(fields[0])
    return pid == os.getpid() or _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a leftover temp path, whatever it is (``shutil.rmtree`` refuses a file or a link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def cleanup_stale(root: Path) -> None:
    """Remove the temp dirs of dead writers, of every date (a run killed on one date leaves its temp
    dir until any later run); restore an old partition left by a swap that died halfway.

    A writer is dead as :func:`writer_alive` judges it (a live unrelated process that reused the
    pid keeps the directory until a later run; another host's writer is given a day)."""
    if not root.is_dir():
        return
    for p in sorted(root.glob(".dt=*.*.*")):
        parts = p.name.split(".")  # ['', 'dt=YYYY-MM-DD', 'tmp|old', writer_tag()]
        if len(parts) != 4 or parts[2] not in ("tmp", "old"):
            continue
        fields = parts[-1].split("-")  # this process's own leftovers go too (its writers clean up after themselves)
        mine = fields[0] == str(os.getpid()) and (len(fields) < 3 or fields[2] == HOST_TAG)
        if writer_alive(parts[-1], p) and not mine:
            continue
        target = root / parts[1]
        if parts[-2] == "old" and not target.exists() and (p / SUCCESS_FILE).is_file():
            log.warning("restoring %s from %s (a previous run died mid-swap)", target, p)
            os.rename(p, target)
            continue
        log.info("removing stale temp directory %s", p)
        _remove(p)  # a link too, left by a swap with a linked partition before those were refused


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2). False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (38, 22, 95):  # ENOSYS, EINVAL (fs lacks support), EOPNOTSUPP
            return False
        raise OSError(err, os.strerror(err), str(a))
    return True


def publish_directory(tmp: Path, target: Path, aside: Path) -> None:
    """Put the folder ``tmp`` at ``target``: one rename when there is nothing there, else one
    :func:`exchange` (where that is missing: ``target`` renamed to ``aside``, then ``tmp`` to
    ``target``) and the old folder deleted. Readers see the old folder or the new one, never a mix.

    Two writers of one target at once (a double launch, a scheduler's retry): when the other
    publishes between the check for ``target`` and the rename, the rename fails (ENOTEMPTY); the
    new folder then replaces the other's as it would have replaced an earlier one, so the last
    writer wins, whole, and neither fails."""
    if not os.path.lexists(target):
        try:
            os.rename(tmp, target)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            log.info("%s was published by another writer while this one published it; replacing it", target)
    if exchange(tmp, target):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.rename(target, aside)
        os.rename(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def held_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing, and kept afterwards; its
    folder must exist) for the block, waiting while another process holds it: the wait is logged
    once, naming ``what`` and the holder. The kernel releases it when the block ends or the process
    dies.

    Raises:
        OSError: the lock file cannot be opened (a missing or read-only folder).
    """
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            log.info("waiting for %s, held by %s", what, fh.read().strip() or "another process")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield


def linked_copy(src: Path, dest: Path) -> Path:
    """``dest``: a copy of the folder ``src`` whose files are hard links to ``src``'s where the file
    system allows (no bytes copied), plain copies otherwise (another device); returns ``dest``. For
    read-only snapshots under a new name, e.g. in a :func:`scratch_dir`."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another device, or links not supported
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link)
    return dest


def scratch_dir(prefix: str) -> Path:
    """A new private temp folder ``<tmp>/<prefix><pid>_<random>``; the caller removes it. Folders of
    the same prefix whose process is gone (a SIGKILLed job never runs its cleanup) are removed first,
    so killed runs do not pile up copies of models and indexes in ``/tmp``."""
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*_*"):
        pid = stale.name[len(prefix):].split("_")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}_"))


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A :func:`scratch_dir` for the block, removed when it ends: a ``tempfile.TemporaryDirectory``
    whose copy a SIGKILLed job leaves behind is removed by the next job that asks for one."""
    folder = scratch_dir(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _through_links(path: Path) -> Path:
    """Where a write to ``path`` lands: ``path`` itself, or, when it is a symlink, its final target.

    The rename that publishes a write replaces the directory entry it names, so renaming onto a
    symlink would replace the link by a plain file or folder (the link's target kept the old
    content) and, for a folder, leave the link behind as the temp name. Writing to the target
    instead, beside it, keeps the link, as ``open(path, "w")`` and most tools do. A dangling link
    is written through too: its target is created."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def unfinished_write(name: str) -> tuple[str, str] | None:
    """``(the file it replaces, the writer's tag)`` for the name of a :func:`write_file_atomically`
    temp file, ``.<name>.tmp-<writer_tag()>``; None for any other name."""
    head, sep, tail = name.rpartition(".tmp-")
    if not sep or not head.startswith(".") or len(head) < 2 or not tail.split("-")[0].isdigit():
        return None
    return head[1:], tail


def write_file_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` writes a temp file beside ``path`` (parents created; the file is created under
    the umask, as a plain write would be), which then replaces ``path`` in one rename: a reader, or a
    kill mid-write, sees the old file or the new one, never a truncated one. When ``path`` is a
    symlink, its target is replaced this way and the link kept. Returns ``path``.

    A writer killed mid-write (SIGKILL, OOM) leaves its ``.<name>.tmp-<writer_tag()>``, as large as
    the file (a training checkpoint is rewritten every epoch); the next write to ``path`` removes
    those whose writer is gone (:func:`writer_alive`)."""
    path = Path(path)
    dest = _through_links(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.tmp-*"):
        left = unfinished_write(stale.name)
        if left is not None and not writer_alive(left[1], stale):
            _remove(stale)
    tmp = dest.parent / f".{dest.name}.tmp-{writer_tag()}"
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replaces_cwd(out: str | Path, flag: str = "--out", example: str = "out") -> str | None:
    """Why replacing the folder ``out`` whole would replace the working directory (it is that folder,
    or one above it), with the fix (``flag``, and ``example`` as a subfolder's name); None when it
    would not. Links are followed, as the write does."""
    out = Path(out)
    real = Path(os.path.realpath(out))
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == cwd:
        away = f"cd .. and pass {flag} {real.name}, or " if real.name else ""
        return f"the current folder; {away}pass a subfolder, e.g. {flag} {out / example}"
    if real in cwd.parents:
        return f"a folder above the current one ({cwd}); pass a new folder inside it, e.g. {flag} {out / example}"
    return None


def write_directory_atomically(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` fills a hidden temp folder beside ``target``, which is then fsynced and moved
    into place: an existing ``target`` is swapped out in one :func:`exchange`, or, where that is
    missing, moved aside to ``.<name>.old-<pid>-<hex>`` before the rename and deleted after it. A
    writer killed mid-way leaves only ``.<name>.tmp-*`` (or, between the two renames, the old folder
    aside), which the next write to ``target`` removes (or puts back first) once that pid is gone;
    never a partial ``target``. When ``target`` is a symlink, the folder it points to is replaced
    this way and the link kept. Used for item indexes and saved encoders. Returns ``target``.

    Raises:
        OutputError: ``target`` (or the link's target) is a file, not a folder, or it is the working
            directory or a folder above it (:func:`replaces_cwd`): it is not replaced.
    """
    given = Path(target)
    why = replaces_cwd(given)
    if why is not None:  # e.g. --out . from inside an earlier output: the shell would be left in a deleted folder
        raise OutputError(f"output {given} is not replaced: an output folder is replaced whole, and it is {why}")
    target = _through_links(given)
    if target.exists() and not target.is_dir():  # the swap would leave it hidden as a temp name
        raise OutputError(
            f"output {given} is a file where a folder goes; it is not replaced: move or delete it, "
            "or choose another output folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    for place in dict.fromkeys([target, given]):  # beside a link too: writes before links were followed left one there
        for kind in ("tmp", "old"):
            for stale in sorted(place.parent.glob(f".{place.name}.{kind}-*")):
                if writer_alive(stale.name.rsplit(f".{kind}-", 1)[-1], stale):
                    continue  # another writer's, still running
                if kind == "old" and not os.path.lexists(place):  # died between the renames: put it back
                    log.warning("restoring %s from %s (a previous write died mid-swap)", place, stale)
                    os.rename(stale, place)
                else:
                    _remove(stale)
    tmp = target.parent / f".{target.name}.tmp-{writer_tag()}"
    try:
        tmp.mkdir()
        write(tmp)
        for p in [*tmp.rglob("*"), tmp]:
            if p.is_file() or p.is_dir():
                fsync_path(p)
        publish_directory(tmp, target, target.parent / f".{target.name}.old-{writer_tag()}")
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


class PartitionWriter:
    """Write part files into a hidden temp dir, then :meth:`commit` swaps it into place.

    Use as a context manager: leaving the block without :meth:`commit` (an exception) removes the
    temp dir and leaves the previous partition untouched.

    Example::

        with PartitionWriter("runs/candidates", "2024-05-01") as w:
            w.write_part(table)
            w.commit({"rows": table.num_rows})
    """

    def __init__(self, root: str | Path, dt: str) -> None:
        self.root = Path(root)
        self.dt = dt
        self.target = self.root / partition_name(dt)
        self.tmp: Path | None = None
        self.parts: list[Path] = []
        self.committed = False

    def __enter__(self) -> PartitionWriter:
        """Create the temp dir (removing dead writers' ones first).

        Raises:
            OutputError: ``root`` cannot be written, or a file stands where the partition folder goes.
        """
        if self.target.is_symlink():  # the swap would replace the link, and leave it as a temp name
            raise OutputError(
                f"candidates output {self.target} is a symlink (to {os.readlink(self.target)}) where the partition "
                f"folder for {self.dt} goes; publishing replaces a folder, not a link's target: remove the link, "
                "or set candidates.output_dir to the folder it points into"
            )
        if self.target.exists() and not self.target.is_dir():  # the swap would hide it as a temp file
            raise OutputError(
                f"candidates output {self.target} is a file where the partition folder for {self.dt} goes; it is "
                "not replaced: move or delete it, or set candidates.output_dir to another folder"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            cleanup_stale(self.root)
            self.tmp = self.root / f".{partition_name(self.dt)}.tmp.{writer_tag()}"
            self.tmp.mkdir()
        except OSError as e:
            raise OutputError(
                f"cannot write candidates under {str(self.root)!r} ({e.strerror or e}); "
                "set candidates.output_dir to a writable directory"
            ) from e
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.committed and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def temp_dir(self) -> Path:
        assert self.tmp is not None, "use PartitionWriter as a context manager"
        return self.tmp

    def write_part(self, table: pa.Table) -> Path:
        """Write ``table`` as the next ``part-NNNNN.parquet`` and fsync it."""
        path = self.temp_dir / f"part-{len(self.parts):05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        fsync_path(path)
        self.parts.append(path)
        delay = os.environ.get(SLEEP_HOOK_ENV)
        if delay:  # test hook: a window in which a test SIGKILLs the writer
            time.sleep(float(delay))
        return path

    def commit(self, manifest: dict[str, Any], validate: Callable[[Path], None] | None = None) -> Path:
        """Write ``_SUCCESS`` (JSON ``manifest``), fsync, and swap the temp dir into place.

        ``validate(temp_dir)`` runs before the swap; raising there publishes nothing.
        """
        tmp = self.temp_dir
        if validate is not None:
            validate(tmp)
        success = tmp / SUCCESS_FILE
        success.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        fsync_path(success)
        fsync_path(tmp)
        publish_directory(tmp, self.target, self.root / f".{partition_name(self.dt)}.old.{tmp.name.rsplit('.', 1)[-1]}")
        fsync_path(self.root)
        self.committed = True
        return self.target


def read_success(partition: str | Path) -> dict[str, Any] | None:
    """The ``_SUCCESS`` manifest of a published partition, or None when it is not complete."""
    path = Path(partition) / SUCCESS_FILE
    if not path.is_file():
        return None
    try:
        out: dict[str, Any] = json.loads(path.read_text())
        return out
    except json.JSONDecodeError:
        return None
