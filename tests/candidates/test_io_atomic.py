"""Atomic partition replacement: temp dir + fsync + swap; failures leave the previous partition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_cl.io_atomic import OutputError, PartitionWriter, cleanup_stale, linked_copy, read_success


def _publish(root: Path, value: int) -> Path:
    with PartitionWriter(root, "2024-01-01") as w:
        w.write_part(pa.table({"x": [value]}))
        return w.commit({"value": value})


def test_commit_publishes_and_replaces(tmp_path: Path) -> None:
    p = _publish(tmp_path, 1)
    assert read_success(p) == {"value": 1} and (p / "part-00000.parquet").is_file()
    p = _publish(tmp_path, 2)
    assert read_success(p) == {"value": 2}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["dt=2024-01-01"]


def test_failure_before_commit_keeps_the_previous_partition(tmp_path: Path) -> None:
    _publish(tmp_path, 1)
    with pytest.raises(RuntimeError):
        with PartitionWriter(tmp_path, "2024-01-01") as w:
            w.write_part(pa.table({"x": [2]}))
            raise RuntimeError("boom")
    assert read_success(tmp_path / "dt=2024-01-01") == {"value": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["dt=2024-01-01"]


def test_validate_failure_publishes_nothing(tmp_path: Path) -> None:
    def bad(tmp: Path) -> None:
        raise ValueError("unhealthy")

    with pytest.raises(ValueError):
        with PartitionWriter(tmp_path, "2024-01-02") as w:
            w.write_part(pa.table({"x": [1]}))
            w.commit({}, validate=bad)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".dt=2024-01-01.tmp.{pid}-abcd1234"
    stale.mkdir()
    (stale / "part-00000.parquet").write_text("half")
    live = tmp_path / f".dt=2024-01-01.tmp.{os.getppid()}-abcd1234"  # a live process: left alone
    live.mkdir()
    other_day = tmp_path / f".dt=2023-12-31.tmp.{pid}-abcd1234"  # killed on another date
    other_day.mkdir()
    _publish(tmp_path, 1)
    assert not stale.exists() and live.exists() and not other_day.exists()


def test_another_hosts_temp_dirs_are_left_until_untouched_for_a_day(tmp_path: Path) -> None:
    """On an output folder shared between hosts, another host's writer cannot be checked by pid
    (its pid is dead here, or another process's): its temp dirs and files stay while it may still be
    writing, and go once untouched for FOREIGN_WRITER_S. Dead writers of this host go at once."""
    from recsys_cl.io_atomic import FOREIGN_WRITER_S, HOST_TAG, write_directory_atomically, write_file_atomically

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    elsewhere = "0123abcd" if HOST_TAG != "0123abcd" else "fedc9876"
    busy = tmp_path / f".dt=2024-01-01.tmp.{dead}-abcd1234-{elsewhere}"  # another host, writing now
    busy.mkdir()
    idle = tmp_path / f".dt=2023-12-31.tmp.{dead}-abcd1234-{elsewhere}"  # another host, killed long ago
    idle.mkdir()
    old = os.stat(idle).st_mtime - FOREIGN_WRITER_S - 60
    os.utime(idle, (old, old))
    ours = tmp_path / f".dt=2023-12-30.tmp.{dead}-abcd1234-{HOST_TAG}"  # this host, dead pid
    ours.mkdir()
    _publish(tmp_path, 1)
    assert busy.exists() and not idle.exists() and not ours.exists()

    # the same rule for write_file_atomically's and write_directory_atomically's temp names
    out = tmp_path / "files"
    out.mkdir()
    foreign_file = out / f".model.pt.tmp-{dead}-abcd1234-{elsewhere}"
    foreign_file.write_text("half")
    foreign_dir = out / f".index.tmp-{dead}-abcd1234-{elsewhere}"
    foreign_dir.mkdir()
    write_file_atomically(out / "model.pt", lambda tmp: tmp.write_text("whole"))
    write_directory_atomically(out / "index", lambda tmp: (tmp / "x").write_text("whole"))
    assert foreign_file.exists() and foreign_dir.exists()
    for stale in (foreign_file, foreign_dir):
        os.utime(stale, (old, old))
    write_file_atomically(out / "model.pt", lambda tmp: tmp.write_text("whole"))
    write_directory_atomically(out / "index", lambda tmp: (tmp / "x").write_text("whole"))
    assert not foreign_file.exists() and not foreign_dir.exists()
    assert sorted(p.name for p in out.iterdir()) == ["index", "model.pt"]


def _published_by_another_writer_just_before_the_rename(
    monkeypatch: pytest.MonkeyPatch, tmp: Callable[[], Path], publish: Callable[[], Any],
) -> list[Any]:
    """``os.rename`` that, when the folder ``tmp()`` is about to be renamed, first runs ``publish()``
    (the other writer of the same target, which checked for it at the same time)."""
    real, done = os.rename, []

    def rename(src: Any, dst: Any) -> None:
        if not done and Path(src) == tmp():
            done.append(publish())
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return done


def test_two_writers_publishing_a_new_partition_at_once_both_succeed_and_the_last_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two jobs writing the same new date: the one whose rename came second failed with
    OSError(39, 'Directory not empty') (seen 19 times in 200 synchronised commits of two processes)."""
    import recsys_cl.io_atomic as io_atomic

    monkeypatch.setattr(io_atomic, "cleanup_stale", lambda root: None)  # both writers live in this process here
    with PartitionWriter(tmp_path, "2024-01-01") as last:
        last.write_part(pa.table({"x": [2]}))
        other = _published_by_another_writer_just_before_the_rename(
            monkeypatch, lambda: last.temp_dir, lambda: _publish(tmp_path, 1))
        partition = last.commit({"value": 2})
    assert other == [partition]  # the other writer published first
    assert read_success(partition) == {"value": 2}
    assert pq.read_table(partition / "part-00000.parquet").column("x").to_pylist() == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["dt=2024-01-01"]  # no temp or old folder left


def test_two_writers_publishing_a_new_folder_at_once_both_succeed_and_the_last_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build_index (or nightly's per-version index) into the same new --out at once."""
    from recsys_cl.io_atomic import write_directory_atomically

    target = tmp_path / "index"
    mine: list[Path] = []

    def write(folder: Path) -> None:
        mine.append(folder)
        (folder / "who").write_text("last")

    _published_by_another_writer_just_before_the_rename(
        monkeypatch, lambda: mine[0] if mine else Path("/nowhere"),
        lambda: write_directory_atomically(target, lambda f: (f / "who").write_text("other")))
    write_directory_atomically(target, write)
    assert [p.name for p in target.iterdir()] == ["who"] and (target / "who").read_text() == "last"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_died_mid_swap_restores_the_old_partition(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    old = tmp_path / f".dt=2024-01-01.old.{dead}-abcd1234"
    old.mkdir()
    (old / "_SUCCESS").write_text(json.dumps({"value": 0}))
    cleanup_stale(tmp_path)
    assert read_success(tmp_path / "dt=2024-01-01") == {"value": 0}


def test_unwritable_output_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match=r"cannot write candidates under .*candidates\.output_dir"):
        with PartitionWriter(blocker / "candidates", "2024-01-01"):
            pass


def test_a_file_where_the_partition_goes_is_refused_and_kept(tmp_path: Path) -> None:
    """The swap would exchange it with the temp dir and leave it hidden as .dt=....tmp.* forever."""
    (tmp_path / "dt=2024-01-01").write_text("mine")
    with pytest.raises(OutputError, match=r"candidates output .*dt=2024-01-01 is a file where the partition folder "
                                          r"for 2024-01-01 goes; it is not replaced: move or delete it"):
        _publish(tmp_path, 1)
    assert (tmp_path / "dt=2024-01-01").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt=2024-01-01"]


def test_write_directory_atomically_never_leaves_a_partial_folder(tmp_path: Path) -> None:
    """A writer that fails mid-way (or is killed: its temp folder stays until a later write finds
    its pid gone) leaves no target; an existing target is replaced whole."""
    from recsys_cl.io_atomic import write_directory_atomically

    target = tmp_path / "run" / "encoder"

    def half(folder: Path) -> None:
        (folder / "weights.pt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_directory_atomically(target, half)
    assert not target.exists() and list(target.parent.iterdir()) == []
    stale = target.parent / ".encoder.tmp-999999999-deadbeef"  # a killed writer's (no such pid)
    stale.mkdir()
    write_directory_atomically(target, lambda f: (f / "weights.pt").write_text("v1"))
    write_directory_atomically(target, lambda f: (f / "config.json").write_text("v2"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["encoder"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # replaced whole, not merged


def test_a_file_writer_killed_mid_write_leaves_a_temp_file_the_next_write_removes(tmp_path: Path) -> None:
    """A SIGKILL during a checkpoint's write left ``.<name>.tmp-<pid>-<hex>`` (tens of MB each) for good."""
    import signal

    from recsys_cl.io_atomic import write_file_atomically

    target = tmp_path / "ck" / "key.pt"
    code = ("import sys, time\nfrom recsys_cl.io_atomic import write_file_atomically\n"
            "def half(tmp):\n    tmp.write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n"
            "write_file_atomically(sys.argv[1], half)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    killed = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, env=env)
    try:
        assert killed.stdout is not None and killed.stdout.readline() == b"writing\n"
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    (left,) = target.parent.glob(".key.pt.tmp-*")
    assert left.name.startswith(f".key.pt.tmp-{killed.pid}-")
    live = target.parent / f".key.pt.tmp-{os.getppid()}-abcd1234"  # a live writer's: left alone
    live.write_bytes(b"busy")
    other = target.parent / ".other.pt.tmp-999999999-abcd1234"  # another file's: not this write's to judge
    other.write_bytes(b"x")

    write_file_atomically(target, lambda tmp: tmp.write_bytes(b"full"))
    assert target.read_bytes() == b"full"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["key.pt", live.name, other.name])


def test_scratch_dirs_of_killed_jobs_are_removed_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILLed job never runs its cleanup: its scratch folder (pid in the name) goes with the next."""
    import tempfile

    from recsys_cl.io_atomic import scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "recsys_cl_spark_index_999999999_abc"  # no such pid
    alive = tmp_path / "recsys_cl_spark_index_1_abc"  # pid 1 is running
    other = tmp_path / "recsys_cl_artifact_999999999_abc"  # another prefix: not ours to judge here
    for d in (dead, alive, other):
        d.mkdir()
    mine = scratch_dir("recsys_cl_spark_index_")
    assert mine.parent == tmp_path and mine.name.startswith(f"recsys_cl_spark_index_{os.getpid()}_")
    assert not dead.exists() and alive.exists() and other.exists()


def test_writes_to_a_symlink_replace_its_target_and_keep_the_link(tmp_path: Path) -> None:
    """Renaming onto a link used to replace the link itself: the file write left the link's target
    stale (the link became a plain file); the folder swap left the link behind as .<name>.tmp-*,
    which no later write could remove (rmtree refuses a link). Now the write goes through the link."""
    from recsys_cl.io_atomic import write_directory_atomically, write_file_atomically

    (tmp_path / "real.json").write_text("old")
    (tmp_path / "out.json").symlink_to("real.json")
    assert write_file_atomically(tmp_path / "out.json", lambda t: t.write_text("new")) == tmp_path / "out.json"
    assert (tmp_path / "out.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"

    (tmp_path / "releases" / "v1").mkdir(parents=True)
    (tmp_path / "releases" / "v1" / "old.txt").write_text("old")
    (tmp_path / "current").symlink_to("releases/v1")
    (tmp_path / ".current.tmp-999999999-deadbeef").symlink_to("releases/v1")  # left by the old code
    write_directory_atomically(tmp_path / "current", lambda f: (f / "new.txt").write_text("new"))
    assert (tmp_path / "current").is_symlink()
    assert sorted(p.name for p in (tmp_path / "releases" / "v1").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "out.json", "real.json", "releases"]
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["v1"]


def test_a_dangling_symlink_is_written_through(tmp_path: Path) -> None:
    """As ``open(link, "w")`` does: the link's target is created, the link kept."""
    from recsys_cl.io_atomic import write_directory_atomically, write_file_atomically

    (tmp_path / "f").symlink_to("sub/file.txt")
    (tmp_path / "d").symlink_to("sub/folder")
    write_file_atomically(tmp_path / "f", lambda t: t.write_text("x"))
    write_directory_atomically(tmp_path / "d", lambda f: (f / "a").write_text("y"))
    assert (tmp_path / "f").is_symlink() and (tmp_path / "sub" / "file.txt").read_text() == "x"
    assert (tmp_path / "d").is_symlink() and (tmp_path / "sub" / "folder" / "a").read_text() == "y"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["file.txt", "folder"]


def test_write_directory_atomically_refuses_a_file_where_the_folder_goes(tmp_path: Path) -> None:
    """The swap would have put the folder in its place and left the file hidden as .<name>.tmp-*."""
    from recsys_cl.io_atomic import write_directory_atomically

    (tmp_path / "encoder").write_text("mine")
    with pytest.raises(OutputError, match=r"output .*encoder is a file where a folder goes; it is not replaced: "
                                          r"move or delete it, or choose another output folder"):
        write_directory_atomically(tmp_path / "encoder", lambda f: (f / "a").write_text("y"))
    assert (tmp_path / "encoder").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]


@pytest.mark.parametrize("out", [".", "..", "../index", "../link"])
def test_write_directory_atomically_never_replaces_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    """``build_index --out .`` from inside an earlier index replaced the folder the shell was in."""
    from recsys_cl.io_atomic import write_directory_atomically

    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "index")
    monkeypatch.chdir(tmp_path / "index")
    why = "a folder above the current one" if out == ".." else "the current folder; cd .. and pass --out index"
    with pytest.raises(OutputError, match=rf"^output {out} is not replaced: an output folder is replaced whole, "
                                          rf"and it is {why}"):
        write_directory_atomically(out, lambda f: (f / "a").write_text("y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "link"]
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["manifest.json"]
    write_directory_atomically("sub", lambda f: (f / "a").write_text("y"))  # a folder below is fine
    assert (tmp_path / "index" / "sub" / "a").read_text() == "y"


def test_a_symlinked_partition_is_refused_and_an_old_linked_temp_is_removed(tmp_path: Path) -> None:
    """The swap exchanged the temp dir with the link: the partition became a plain folder and the
    link stayed as .dt=....tmp.*, which cleanup_stale's rmtree could never remove."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "dt=2024-01-01"
    elsewhere.mkdir(parents=True)
    root.mkdir()
    (root / "dt=2024-01-01").symlink_to(elsewhere)
    with pytest.raises(OutputError, match=r"candidates output .*dt=2024-01-01 is a symlink \(to .*elsewhere/"
                                          r"dt=2024-01-01\) where the partition folder for 2024-01-01 goes; .*"
                                          r"remove the link, or set candidates\.output_dir to the folder it "
                                          r"points into"):
        _publish(root, 1)
    assert sorted(p.name for p in root.iterdir()) == ["dt=2024-01-01"] and (root / "dt=2024-01-01").is_symlink()
    (root / ".dt=2024-01-02.tmp.999999999-deadbeef").symlink_to(elsewhere)  # left by the old swap
    cleanup_stale(root)
    assert sorted(p.name for p in root.iterdir()) == ["dt=2024-01-01"] and elsewhere.is_dir()


def test_linked_copy_links_every_file_under_a_new_name(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "features").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "features" / "items.npy").write_bytes(b"ids")
    dest = linked_copy(src, tmp_path / "ship" / "model-abc")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        ["features", "features/items.npy", "model.pt"]
    assert (dest / "model.pt").stat().st_ino == (src / "model.pt").stat().st_ino  # linked, not copied
    assert (dest / "features" / "items.npy").read_bytes() == b"ids"


def test_linked_copy_copies_where_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "index"
    src.mkdir()
    (src / "items.ann").write_bytes(b"tree")

    def no_link(a: str, b: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dest = linked_copy(src, tmp_path / "index-x")
    assert (dest / "items.ann").read_bytes() == b"tree"
    assert (dest / "items.ann").stat().st_ino != (src / "items.ann").stat().st_ino
