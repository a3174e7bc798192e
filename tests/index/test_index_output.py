"""Where an index build may write: :func:`recsys_cl.index.build.check_replaceable` and the atomic writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_cl.index import load_index
from recsys_cl.index.base import MANIFEST_FILE, Index, backend_class
from recsys_cl.index.build import check_replaceable, write_index_atomically
from recsys_cl.index.exact import ExactIndex
from recsys_cl.io_atomic import OutputError
from index_fixtures import clustered


def _index() -> ExactIndex:
    items, ids, _ = clustered(m=30, clusters=2, q=1)
    index = ExactIndex()
    index.build(items, ids)
    return index


def _write(index: Index, target: Path) -> Path:
    return write_index_atomically(index, index.default_manifest(), target)


@pytest.mark.parametrize("backend", ["exact", "annoy", "faiss"])
def test_a_saved_index_holds_exactly_its_declared_files(backend: str, tmp_path: Path) -> None:
    """``Index.files`` is what the replace check allows: it must name every file ``save`` writes."""
    items, ids, _ = clustered(m=200, clusters=4, q=1)
    index = backend_class(backend)()
    index.build(items, ids)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted({MANIFEST_FILE, *index.files})


def test_a_folder_with_a_foreign_manifest_json_is_never_replaced(tmp_path: Path) -> None:
    """A web app (or anything else) with its own manifest.json is not an index: refused, untouched."""
    webapp = tmp_path / "webapp"
    (webapp / "src").mkdir(parents=True)
    (webapp / MANIFEST_FILE).write_text('{"name": "my-pwa"}')
    (webapp / "src" / "app.js").write_text("x")
    with pytest.raises(OutputError, match=r"webapp exists and is not an index directory \(its manifest\.json is not "
                                          r"an index manifest: .*missing required keys .*will not delete this; pass "
                                          r"--out \(index\.output_dir\) a new or empty directory"):
        _write(_index(), webapp)
    assert (webapp / "src" / "app.js").read_text() == "x"
    assert json.loads((webapp / MANIFEST_FILE).read_text()) == {"name": "my-pwa"}


def test_an_index_folder_holding_other_files_is_never_replaced(tmp_path: Path) -> None:
    target = _write(_index(), tmp_path / "idx")
    (target / "notes.txt").write_text("mine")
    (target / "sub").mkdir()
    with pytest.raises(OutputError, match=r"besides a exact index it holds notes\.txt, sub, which no index build "
                                          r"writes"):
        check_replaceable(target)
    with pytest.raises(OutputError, match="not an index directory"):
        _write(_index(), target)
    assert (target / "notes.txt").read_text() == "mine"


def test_an_empty_folder_or_an_index_folder_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "idx").mkdir()
    target = _write(_index(), tmp_path / "idx")
    _write(_index(), target)
    assert load_index(target).size == 30
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp or old sibling left


def test_the_message_ends_with_the_callers_fix(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "x").write_text("x")
    with pytest.raises(OutputError, match=r"will not delete this; set candidates\.index_root elsewhere$") as e:
        check_replaceable(tmp_path / "v1", "set candidates.index_root elsewhere")
    assert "--out" not in str(e.value)


def test_a_target_that_cannot_be_created_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"index output .*afile/sub/idx cannot be created: .*afile is a file, not "
                                          r"a directory; pass --out"):
        check_replaceable(tmp_path / "afile" / "sub" / "idx")
    with pytest.raises(OutputError, match="cannot be created"):
        _write(_index(), tmp_path / "afile" / "sub")
    assert (tmp_path / "afile").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the probe left nothing


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_nothing_can_be_written_in_is_refused() -> None:
    with pytest.raises(OutputError, match=r"index output /proc/idx cannot be created: nothing can be written in /proc"):
        check_replaceable("/proc/idx")


def test_an_index_is_replaced_in_one_atomic_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never moved aside first: a reader of the directory finds the old index or the new one."""
    import os

    import recsys_cl.index.build
    from recsys_cl.io_atomic import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system: the two-rename fallback is used")
    target = _write(_index(), tmp_path / "idx")
    moved: list[str] = []
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        moved.append(str(src))
        real_rename(src, dst)

    monkeypatch.setattr(recsys_cl.index.build.os, "rename", rename)
    _write(_index(), target)
    assert str(target) not in moved and load_index(target).size == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "idx"]  # the old index is gone


def test_without_the_atomic_swap_two_renames_replace_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2(RENAME_EXCHANGE) is missing (exchange returns False): the old index is moved
    aside, the new one renamed in, the old one deleted; a crash between the renames is undone by the
    next build, which puts the old index back before it writes."""
    import os

    import recsys_cl.io_atomic

    monkeypatch.setattr(recsys_cl.io_atomic, "exchange", lambda a, b: False)
    target = _write(_index(), tmp_path / "idx")
    items, ids, _ = clustered(m=40, clusters=2, q=1)
    bigger = ExactIndex()
    bigger.build(items, ids)
    _write(bigger, target)
    assert load_index(target).size == 40 and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]

    os.rename(target, tmp_path / ".idx.old-999999999-abcdef01")  # killed (no such pid) after moving it aside
    _write(_index(), target)
    assert load_index(target).size == 30 and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


@pytest.mark.parametrize("damage", [{"embedding_dim": "8"}, {"manifest_version": 99}, None])
def test_a_damaged_index_is_replaced_as_its_load_error_advises(damage: dict | None, tmp_path: Path) -> None:
    """Loading a damaged index says 'rebuild it with build_index --out <dir>'; that rebuild must then
    be allowed (a folder holding index files only). A lone foreign manifest.json is still refused."""
    target = _write(_index(), tmp_path / "idx")
    manifest = target / MANIFEST_FILE
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **damage}) if damage else "{not json")
    with pytest.raises(Exception, match="rebuild it with"):
        load_index(target)
    check_replaceable(target)
    _write(_index(), target)
    assert load_index(target).size == 30

    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / MANIFEST_FILE).write_text('{"embedding_dim": "8"}')
    with pytest.raises(OutputError, match=r"its manifest\.json is not an index manifest: .*missing required keys"
                                          r".*; a build replaces") as refused:
        check_replaceable(lone)
    assert "rebuild it" not in str(refused.value)  # the load error's advice is not repeated in the refusal
