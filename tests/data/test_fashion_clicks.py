"""generate_fashion_clicks / write_fashion_clicks: contract, determinism, release times and the
temporal split, planted user tastes, atomic files, the generic loader, and the pipeline.

Core tests run on tiny hand-made images; one test uses the real Fashion-MNIST bundled in data/."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import pytest

from recsys_cl.config import DataConfig, SplitConfig
from recsys_cl.data import fashion_clicks as fc
from recsys_cl.data.errors import DataError
from recsys_cl.data.fashion_clicks import (
    FashionClicksConfig,
    fashion_clicks_meta,
    generate_fashion_clicks,
    read_fashion_clicks_meta,
    release_cutoff,
    write_fashion_clicks,
)
from recsys_cl.data.fashion_mnist import (
    CLASS_NAMES,
    FILES,
    load_fashion_mnist,
    write_idx_images,
    write_idx_labels,
)
from recsys_cl.data.io import load_click_log
from recsys_cl.data.splits import split_clicks
from recsys_cl.data.validate import validate_clicks

FASHION_MNIST = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"  # bundled with the repo
SMALL = FashionClicksConfig(num_items=60, num_users=300, clicks_per_user=20.0, seed=0)


@pytest.fixture(scope="module")
def tiny() -> tuple[np.ndarray, np.ndarray]:
    """60 random 28x28 uint8 'photos' (distinct by construction), 6 of each of the 10 classes."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, size=(60, 1, 28, 28), dtype=np.uint8)
    return images, np.arange(60, dtype=np.int64) % 10


def late_ids(items: pl.DataFrame, clicks: pl.DataFrame, cfg: FashionClicksConfig) -> pl.DataFrame:
    cutoff = release_cutoff(clicks["timestamp"], cfg.release_quantile)
    return items.filter(pl.col("release_ts") >= cutoff).select("item_id")


def top_class_share(clicks: pl.DataFrame, items: pl.DataFrame, min_clicks: int = 10) -> float:
    """Mean over users (with >= min_clicks) of the share of their clicks in their most-clicked class."""
    per = clicks.join(items.select("item_id", "category"), on="item_id").group_by("user_id", "category").len()
    users = per.group_by("user_id").agg(pl.col("len").max().alias("top"), pl.col("len").sum().alias("n"))
    users = users.filter(pl.col("n") >= min_clicks)
    return float((users["top"] / users["n"]).mean())  # type: ignore[arg-type]


def test_schema_dtypes_and_images_are_the_source_photos(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    clicks, items = generate_fashion_clicks(images, labels, SMALL)
    assert dict(clicks.schema) == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
    assert dict(items.schema) == {"item_id": pl.Int64, "category": pl.String, "release_ts": pl.Int64,
                                  "image": pl.List(pl.UInt8)}
    assert items["item_id"].to_list() == list(range(60))
    assert clicks["item_id"].is_in(items["item_id"].implode()).all()
    assert clicks["user_id"].is_between(0, SMALL.num_users - 1).all()
    assert clicks["timestamp"].is_between(SMALL.start, SMALL.end - 1).all()
    assert clicks.sort("timestamp", "user_id", "item_id").equals(clicks)
    # every item image is one of the source photos, row-major, and its category is that photo's class
    source = {images[k].tobytes(): CLASS_NAMES[int(labels[k])] for k in range(len(images))}
    pixels = np.array(items["image"].to_list(), dtype=np.uint8)  # (I, 784)
    assert pixels.shape == (60, 28 * 28)
    assert [source[row.tobytes()] for row in pixels] == items["category"].to_list()
    assert len({row.tobytes() for row in pixels}) == 60  # 60 of 60 images: each used once
    assert "genres" not in items.columns


def test_deterministic_by_seed(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    a = generate_fashion_clicks(images, labels, SMALL)
    b = generate_fashion_clicks(images, labels, SMALL)
    c = generate_fashion_clicks(images, labels, FashionClicksConfig(**{**SMALL.__dict__, "seed": 1}))
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].equals(c[0])


def test_balanced_item_sample() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 50, 3])  # class 9 runs short
    images = rng.integers(0, 256, size=(len(labels), 1, 4, 4), dtype=np.uint8)
    _, items = generate_fashion_clicks(images, labels, FashionClicksConfig(num_items=93, num_users=5))
    counts = items["category"].value_counts().sort("category")
    assert dict(zip(counts["category"], counts["count"])) == {
        **{CLASS_NAMES[k]: 10 for k in range(9)}, CLASS_NAMES[9]: 3}


def test_clicks_after_release_and_no_duplicates(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    for seed in range(3):
        clicks, items = generate_fashion_clicks(images, labels, FashionClicksConfig(
            num_items=60, num_users=300, seed=seed))
        joined = clicks.join(items.select("item_id", "release_ts"), on="item_id")
        assert (joined["timestamp"] >= joined["release_ts"]).all()
        assert not clicks.is_duplicated().any()
        assert validate_clicks(clicks, "fashion", timestamp_unit="s").height == clicks.height
        # early items: every class has one on sale from the first second
        first = items.filter(pl.col("release_ts") == SMALL.start)["category"].unique()
        assert first.len() == 10


def test_late_items_are_cold_in_the_temporal_split(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    for seed in range(3):
        cfg = FashionClicksConfig(num_items=60, num_users=300, seed=seed)
        clicks, items = generate_fashion_clicks(images, labels, cfg)
        late = late_ids(items, clicks, cfg)
        assert late.height == 10 * int(0.2 * 6)  # floor(cold_fraction * 6) per class
        assert items.join(late, on="item_id", how="semi")["category"].n_unique() == 10
        split = split_clicks(validate_clicks(clicks, "fashion"), SplitConfig(kind="temporal"))
        assert split.train.join(late, on="item_id", how="semi").height == 0  # never seen in training
        test_late = split.test.join(late, on="item_id", how="semi").height
        assert test_late / split.test.height >= 0.15  # a healthy share of the test clicks
        meta = fashion_clicks_meta(clicks, items, cfg, images.shape[1:])
        assert meta["late_item_clicks"]["before_val_cutoff"] == 0
        assert meta["counts"]["late_items"] == late.height


def test_users_concentrate_on_their_preferred_classes(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    """Planted tastes: the mean share of a user's clicks in their top class is far above what the
    same clicks give with users shuffled, and what near-uniform tastes give (10 classes, ~20
    clicks: about 0.25)."""
    images, labels = tiny
    clicks, items = generate_fashion_clicks(images, labels, SMALL)
    real = top_class_share(clicks, items)
    shuffled = clicks.with_columns(pl.col("user_id").shuffle(seed=0))
    baseline = top_class_share(shuffled, items)
    uniform_cfg = FashionClicksConfig(**{**SMALL.__dict__, "class_concentration": 1000.0})
    uniform = top_class_share(*generate_fashion_clicks(images, labels, uniform_cfg))
    assert real > 0.45, real
    assert baseline < 0.35 and uniform < 0.35, (baseline, uniform)
    assert real - max(baseline, uniform) > 0.15


def test_bad_inputs(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    with pytest.raises(DataError, match=r"images\[:, None\]"):
        generate_fashion_clicks(images[:, 0], labels, SMALL)
    with pytest.raises(DataError, match="num_items=61"):
        generate_fashion_clicks(images, labels, FashionClicksConfig(num_items=61))
    with pytest.raises(DataError, match="class ids 0..9"):
        generate_fashion_clicks(images, labels + 1, SMALL)
    with pytest.raises(ValueError, match=r"^cold_fraction must be in \[0, 1\), got 1.0$"):
        FashionClicksConfig(cold_fraction=1.0)


def write_small(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]
) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    images, labels = tiny
    clicks, items = generate_fashion_clicks(images, labels, SMALL)
    out = write_fashion_clicks(tmp_path / "fc", clicks, items,
                               fashion_clicks_meta(clicks, items, SMALL, images.shape[1:]))
    return out, clicks, items


def test_write_files_readme_and_metadata(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    out, clicks, items = write_small(tmp_path, tiny)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "clicks.parquet", "items.parquet"]
    assert pl.read_parquet(out / "clicks.parquet").equals(clicks)
    assert pl.read_parquet(out / "items.parquet").equals(items)
    readme = (out / "README.md").read_text()
    for needle in ("Semi-synthetic: real product images, simulated users and clicks; not a real click log",
                   "MIT", "Zalando", "Xiao", "arXiv:1708.07747", "[1, 28, 28]",
                   f"| {clicks.height} | 300 | 60 |",
                   '"cold_fraction": 0.2', "Permission is hereby granted"):
        assert needle in readme, needle
    meta = read_fashion_clicks_meta(out / "items.parquet")
    assert meta == read_fashion_clicks_meta(out / "clicks.parquet")
    assert meta["image_shape"] == [1, 28, 28] and meta["counts"]["clicks"] == clicks.height
    assert meta["config"]["seed"] == 0 and "not a real click log" in meta["description"]


def test_write_is_atomic(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies mid-file leaves the previous files whole and no temp file behind."""
    out, clicks, items = write_small(tmp_path, tiny)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies_midway(table: object, path: Path, **kw: object) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(fc.pq, "write_table", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        write_fashion_clicks(out, clicks.head(5), items, {"counts": {}})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_click_log_reads_the_parquet_pair(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    out, clicks, items = write_small(tmp_path, tiny)
    log = load_click_log(DataConfig(format="parquet", path=str(out / "clicks.parquet"),
                                    items_path=str(out / "items.parquet")))
    assert log.clicks.select("user_id", "item_id", "timestamp").equals(clicks)
    assert log.items is not None
    assert dict(log.items.schema) == dict(items.schema)  # the image column survives as List(UInt8)
    assert log.items.equals(items)


def test_pipeline_writes_and_explains(
    tmp_path: Path, fmnist_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import make_fashion_clicks

    folder = fmnist_folder
    out = tmp_path / "out"
    meta = make_fashion_clicks.main(["--fashion-mnist", str(folder), "--out", str(out), "--num-items", "50",
                                     "--num-users", "30", "--seed", "3"])
    printed = capsys.readouterr().out
    assert "not a real click log" in printed
    assert f"--set data.path={out}/clicks.parquet --set data.items_path={out}/items.parquet" in printed
    assert meta["counts"]["items"] == 50 and meta["config"]["seed"] == 3
    assert (out / "README.md").is_file()
    with pytest.raises(SystemExit, match=r"data error: .*missing' does not exist; point --fashion-mnist at"):
        make_fashion_clicks.main(["--fashion-mnist", str(tmp_path / "missing"), "--out", str(out)])
    again = make_fashion_clicks.main(["--fashion-mnist", str(folder), "--out", str(out), "--num-items", "50",
                                      "--num-users", "30", "--seed", "4"])  # an earlier output: replaced
    assert again["config"]["seed"] == 4
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    with pytest.raises(SystemExit, match=r"output error: --out .*mine holds README.md but no Parquet file, so not an "
                                         r"earlier make_fashion_clicks output \(an earlier output holds only"):
        make_fashion_clicks.main(["--fashion-mnist", str(folder), "--out", str(mine)])
    assert (mine / "README.md").read_text() == "my notes"
    with pytest.raises(SystemExit) as e:  # named by the flags given, only the broken ones
        make_fashion_clicks.main(["--fashion-mnist", str(folder), "--out", str(out), "--num-users", "0",
                                  "--cold-fraction", "1"])
    assert str(e.value) == ("argument error: --num-users must be >= 1, got 0; "
                            "--cold-fraction must be in [0, 1), got 1.0")
    with pytest.raises(SystemExit) as e:
        make_fashion_clicks.main(["--help"])
    assert e.value.code == 0 and "Examples:" in capsys.readouterr().out


def test_default_config_on_real_fashion_mnist() -> None:
    images, labels = load_fashion_mnist(FASHION_MNIST, "train")
    cfg = FashionClicksConfig()
    clicks, items = generate_fashion_clicks(images, labels, cfg)
    meta = fashion_clicks_meta(clicks, items, cfg, images.shape[1:])
    counts = meta["counts"]
    assert counts["items"] == 3000 and counts["users"] == 2000 and counts["late_items"] == 600
    assert 50_000 < counts["clicks"] < 70_000
    assert items["category"].value_counts()["count"].to_list() == [300] * 10
    assert meta["late_item_clicks"]["before_val_cutoff"] == 0
    assert meta["late_item_clicks"]["share_of_test_period_clicks"] >= 0.15
    # popularity is skewed: the top 10% of items get over a third of the clicks
    per_item = clicks["item_id"].value_counts()["count"].sort(descending=True)
    assert per_item.head(300).sum() / clicks.height > 1 / 3


@pytest.fixture()
def fmnist_folder(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST training split (50 random 28x28 images, 5 per class) for the pipeline."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    img_name, lab_name = FILES["train"]
    write_idx_images(folder / img_name, rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8))
    write_idx_labels(folder / lab_name, np.arange(50) % 10)
    return folder


def run_pipeline(folder: Path, out: Path, *extra: str) -> dict[str, Any]:
    from pipelines import make_fashion_clicks

    return make_fashion_clicks.main(["--fashion-mnist", str(folder), "--out", str(out), "--num-items", "50",
                                     "--num-users", "30", *extra])


@pytest.mark.parametrize("seed", ["-1", str(2**31)])
def test_pipeline_refuses_bad_seed_without_traceback_or_folder(fmnist_folder: Path, tmp_path: Path,
                                                               seed: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run_pipeline(fmnist_folder, out, "--seed", seed)
    assert str(e.value) == f"argument error: --seed must be an integer in [0, 2147483647], got {seed}"
    assert not out.exists()


def test_pipeline_refuses_infinite_clicks_per_user(fmnist_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^argument error: --clicks-per-user must be a finite number >= 1, "
                                         r"got inf$"):
        run_pipeline(fmnist_folder, tmp_path / "out", "--clicks-per-user", "inf")


DEAD_PID = 999_999_999  # above any pid_max: no such process


def test_pipeline_reruns_over_a_killed_runs_partial_output(fmnist_folder: Path, tmp_path: Path) -> None:
    """A run killed mid-write leaves some of its files and hidden temps; the rerun replaces them all
    (it said 'already holds [items.parquet], not (only) an earlier make_fashion_clicks output')."""
    out = tmp_path / "out"
    run_pipeline(fmnist_folder, out, "--seed", "1")
    (out / "clicks.parquet").unlink()
    (out / "README.md").unlink()  # as a SIGKILL between the files of the old one-by-one writer left it
    (out / f".clicks.parquet.tmp-{DEAD_PID}-0123abcd").write_bytes(b"PAR1 half a file")
    stale = out / f"{fc.TMP_PREFIX}{DEAD_PID}-0123abcd"
    stale.mkdir()
    (stale / "items.parquet").write_bytes(b"PAR1 half")
    meta = run_pipeline(fmnist_folder, out, "--seed", "2")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "clicks.parquet", "items.parquet"]
    assert read_fashion_clicks_meta(out / "items.parquet") == meta == read_fashion_clicks_meta(out / "clicks.parquet")
    assert meta["config"]["seed"] == 2


def _dies_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make the next write raise KeyboardInterrupt (as SIGINT) at ``step``: writing one of the files,
    at the swap (``exchange``), or, where that call is missing, between the two renames."""
    from recsys_cl import io_atomic

    real_write, real_text, real_rename = fc.pq.write_table, Path.write_text, io_atomic.os.rename

    def write_table(table: Any, path: Any, **kw: Any) -> None:
        if Path(path).name == step:
            raise KeyboardInterrupt
        real_write(table, path, **kw)

    def write_text(self: Path, *a: Any, **kw: Any) -> int:
        if self.name == step:
            raise KeyboardInterrupt
        return real_text(self, *a, **kw)

    def exchange(a: Path, b: Path) -> bool:
        if step == "exchange":
            raise KeyboardInterrupt
        return False  # "between renames": renameat2 missing, the old folder is moved aside first

    def rename(a: Any, b: Any) -> None:
        if step == "between renames" and Path(a).name.startswith(".fc.tmp-"):
            raise KeyboardInterrupt
        real_rename(a, b)

    monkeypatch.setattr(fc.pq, "write_table", write_table)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(io_atomic, "exchange", exchange)
    monkeypatch.setattr(io_atomic.os, "rename", rename)
    monkeypatch.setattr(io_atomic.os, "getpid", lambda: DEAD_PID)  # as if the killed process is gone


@pytest.mark.parametrize("step", ["items.parquet", "clicks.parquet", "README.md", "exchange", "between renames"])
def test_killed_mid_write_keeps_the_old_complete_set_and_reruns(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The folder is replaced whole: a run that dies while writing any file or at the swap leaves the
    old set byte for byte (the one-by-one writer, killed between its renames, left the new
    clicks.parquet beside the old items.parquet and no README.md); the rerun replaces it and removes
    the temp folder. Without renameat2, death between the two renames leaves the old set aside,
    whole, and the rerun puts it back before replacing it."""
    out, clicks, items = write_small(tmp_path, tiny)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    meta = fashion_clicks_meta(clicks.head(5), items, SMALL, (1, 28, 28))
    with monkeypatch.context() as m:
        _dies_at(m, step)
        with pytest.raises(KeyboardInterrupt):
            write_fashion_clicks(out, clicks.head(5), items, meta)
    if step == "between renames":
        [aside] = [p for p in tmp_path.iterdir() if p.name.startswith(f".fc.old-{DEAD_PID}-")]
        assert not out.exists() and {p.name: p.read_bytes() for p in aside.iterdir()} == before
    else:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fc"]
    write_fashion_clicks(out, clicks.head(5), items, meta)
    assert pl.read_parquet(out / "clicks.parquet").equals(clicks.head(5))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "clicks.parquet", "items.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_run_stopped_at_any_move_into_out_leaves_a_complete_set(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Whatever the mechanism, stopped at its n-th rename into --out, the folder holds the old set or
    the new one. The one-by-one writer failed both: it removed README.md first, then moved
    clicks.parquet in, so a stop there left the new clicks beside the old items."""
    from recsys_cl import io_atomic

    out, clicks, items = write_small(tmp_path, tiny)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    moves: list[Path] = []

    def counted(real: Any) -> Any:
        def move(a: Any, b: Any, *rest: Any) -> Any:
            if Path(b) == out or Path(b).parent == out:
                moves.append(Path(b))
                if len(moves) == n:
                    raise KeyboardInterrupt
            return real(a, b, *rest)
        return move

    meta = fashion_clicks_meta(clicks.head(5), items, SMALL, (1, 28, 28))
    with monkeypatch.context() as m:
        for name in ("replace", "rename"):
            m.setattr(io_atomic.os, name, counted(getattr(io_atomic.os, name)))
        m.setattr(io_atomic, "exchange", counted(io_atomic.exchange))
        try:
            write_fashion_clicks(out, clicks.head(5), items, meta)
        except KeyboardInterrupt:
            pass
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    if len(moves) == n:  # stopped at that move: the old set, byte for byte
        assert after == before
    else:  # the whole-folder writer makes fewer moves into --out than n: it finished, the new set
        assert moves and len(moves) < n and after != before
        assert sorted(after) == ["README.md", "clicks.parquet", "items.parquet"]
        assert pl.read_parquet(out / "clicks.parquet").equals(clicks.head(5))
        assert read_fashion_clicks_meta(out / "items.parquet") == meta


def test_a_killed_writers_temp_folder_is_removed_by_the_rerun(
    tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]
) -> None:
    out, clicks, items = write_small(tmp_path, tiny)
    stale = tmp_path / f".fc.tmp-{DEAD_PID}-0123abcd"  # as a SIGKILL mid-write leaves it
    stale.mkdir()
    (stale / "items.parquet").write_bytes(b"PAR1 half")
    write_small(tmp_path, tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc"]


def test_hidden_files_in_out_are_refused_not_deleted(fmnist_folder: Path, tmp_path: Path) -> None:
    """The swap replaces --out whole, so a file the user keeps there, hidden or not, stops it."""
    out = tmp_path / "out"
    run_pipeline(fmnist_folder, out)
    (out / ".gitignore").write_text("*\n")
    with pytest.raises(SystemExit, match=r"^output error: --out .*out holds \.gitignore, which make_fashion_clicks "
                                         r"does not write \(an earlier output holds only clicks\.parquet, "
                                         r"items\.parquet, README\.md, .* so they would be deleted\)\. Move them out, "
                                         r"or pass a new or empty folder$"):
        run_pipeline(fmnist_folder, out)
    assert (out / ".gitignore").read_text() == "*\n"


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("given, where", [
    (".", "the current folder; cd .. and pass --out out, or pass a subfolder, e.g. --out fashion-clicks"),
    ("../out", "the current folder; cd .. and pass --out out, or pass a subfolder, e.g. --out ../out/fashion-clicks"),
    ("../link", "the current folder; cd .. and pass --out out, or pass a subfolder, e.g. --out ../link/fashion-clicks"),
    ("..", "a folder above the current one ({cwd}); pass a new folder inside it, e.g. --out ../fashion-clicks"),
])
def test_out_that_is_the_working_folder_or_above_it_is_refused(
    fmnist_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, where: str
) -> None:
    """Rerun from inside an output folder with --out . (or a link to it) and the swap replaced the
    folder the shell was in, which was left in a deleted directory; --out .. would replace the
    user's parent folder. Both are refused before any work, naming the folder to pass instead."""
    out = tmp_path / "out"
    run_pipeline(fmnist_folder, out)
    (tmp_path / "link").symlink_to(out)
    before = _contents(out)
    monkeypatch.chdir(out)
    with pytest.raises(SystemExit) as e:
        run_pipeline(fmnist_folder, Path(given))
    assert str(e.value) == (f"output error: --out {given} is not replaced: the output folder is replaced whole, "
                            f"and it is {where.format(cwd=out)}")
    assert os.path.samefile(".", out) and _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fmnist", "link", "out"]


def _plant_folder(out: Path, name: str, other: Path) -> None:
    (out / name).unlink(missing_ok=True)
    (out / name).mkdir()
    (out / name / "notes.txt").write_text("mine")


def _plant_link(out: Path, name: str, other: Path) -> None:  # to an earlier output's own file
    (out / name).unlink()
    (out / name).symlink_to(other / name)


def _plant_file(out: Path, name: str, other: Path) -> None:
    (out / name).write_text("mine")


@pytest.mark.parametrize("plant, name, found", [
    (_plant_folder, "README.md", "README.md (a folder)"),
    (_plant_link, "clicks.parquet", "clicks.parquet (a link)"),
    (_plant_folder, ".make_fashion_clicks.tmp-notes", ".make_fashion_clicks.tmp-notes (a folder)"),
    (_plant_folder, f".make_fashion_clicks.tmp-{DEAD_PID}-0123abcd",
     f".make_fashion_clicks.tmp-{DEAD_PID}-0123abcd (a folder)"),
    (_plant_file, ".items.parquet.tmp-mine", ".items.parquet.tmp-mine"),
])
def test_entries_that_only_look_like_an_output_are_refused_not_deleted(
    fmnist_folder: Path, tmp_path: Path, plant: Callable[[Path, str, Path], None], name: str, found: str
) -> None:
    """Only the entries' names were checked, so a folder named README.md, or one named like an old
    run's temp (with the user's notes.txt in it), went with the replaced folder; so did a link."""
    out, other = tmp_path / "out", tmp_path / "other"
    run_pipeline(fmnist_folder, out)
    run_pipeline(fmnist_folder, other)
    plant(out, name, other)
    before = _contents(out)
    with pytest.raises(SystemExit) as e:
        run_pipeline(fmnist_folder, out, "--seed", "5")
    assert str(e.value) == (
        f"output error: --out {out} holds {found}, which make_fashion_clicks does not write (an earlier output "
        "holds only clicks.parquet, items.parquet, README.md, written by make_fashion_clicks, and is replaced "
        "whole, so they would be deleted). Move them out, or pass a new or empty folder")
    assert _contents(out) == before


def test_a_parquet_without_the_metadata_is_refused(fmnist_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pl.DataFrame({"user_id": [1]}).write_parquet(out / "clicks.parquet")
    with pytest.raises(SystemExit) as e:
        run_pipeline(fmnist_folder, out)
    assert str(e.value) == (
        f"output error: --out {out}: clicks.parquet has no recsys_cl.fashion_clicks metadata, so it was not "
        "written by make_fashion_clicks (an earlier output holds only clicks.parquet, items.parquet, README.md, "
        "written by make_fashion_clicks, and is replaced whole). Move it out, or pass a new or empty folder")
    assert pl.read_parquet(out / "clicks.parquet").columns == ["user_id"]


def test_reruns_replace_an_earlier_output_from_beside_or_above_it(
    fmnist_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusals leave reruns alone: --out out from its parent, ../out from a sibling whose name
    starts the same, and over a killed old-style run's hidden temps."""
    monkeypatch.chdir(tmp_path)
    run_pipeline(fmnist_folder, Path("out"), "--seed", "1")
    assert run_pipeline(fmnist_folder, Path("out"), "--seed", "2")["config"]["seed"] == 2
    (tmp_path / "out-notes").mkdir()
    monkeypatch.chdir(tmp_path / "out-notes")
    (tmp_path / "out" / f".README.md.tmp-{DEAD_PID}-0123abcd").write_text("half")
    stale = tmp_path / "out" / f"{fc.TMP_PREFIX}{DEAD_PID}-0123abcd"
    stale.mkdir()
    (stale / "clicks.parquet").write_bytes(b"PAR1 half")
    assert run_pipeline(fmnist_folder, Path("../out"), "--seed", "3")["config"]["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "clicks.parquet", "items.parquet"]
    assert read_fashion_clicks_meta(tmp_path / "out" / "clicks.parquet")["config"]["seed"] == 3


def test_pipeline_refuses_a_corrupt_parquet_in_out_in_one_line(fmnist_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "clicks.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SystemExit) as e:
        run_pipeline(fmnist_folder, out)
    message = str(e.value)
    assert message.startswith(f"output error: --out {out}: clicks.parquet is not a readable Parquet file (")
    assert message.endswith("it is not replaced: delete it or pass a new or empty folder") and "\n" not in message
    assert (out / "clicks.parquet").read_bytes() == b"not parquet at all"


def test_pipeline_data_errors_name_the_flags_and_create_no_out(fmnist_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"^data error: .*missing' does not exist; point --fashion-mnist at"):
        run_pipeline(tmp_path / "missing", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"^data error: .*train-images-idx3-ubyte.gz: file not found; point "
                                         r"--fashion-mnist at a folder"):
        run_pipeline(empty, out)
    with pytest.raises(SystemExit, match=r"^data error: --num-items=51 but only 50 images were given; "
                                         r"lower --num-items$"):
        run_pipeline(fmnist_folder, out, "--num-items", "51")
    assert not out.exists()


@pytest.mark.parametrize(("flags", "fix"), [
    (["--num-items", "5"], "has at most 1 items; raise --num-items to at least 50 (5 per class)"),
    (["--num-items", "40"], "has at most 4 items; raise --num-items to at least 50 (5 per class) or "
                            "--cold-fraction to at least 0.25"),
])
def test_pipeline_refuses_settings_with_no_late_items(fmnist_folder: Path, tmp_path: Path, flags: list[str],
                                                      fix: str) -> None:
    """A cold-start log with no cold items is useless: --num-items 5 wrote one with late_items: 0."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"^data error: --num-items=\d+ with --cold-fraction=0.2 leaves no late "
                                         r"\(cold-start\) items: each class gets floor\(size \* cold fraction\) "
                                         r"of them and " + re.escape(fix) + "$"):
        run_pipeline(fmnist_folder, out, *flags)
    assert not out.exists()
    meta = run_pipeline(fmnist_folder, out, *flags, "--cold-fraction", "0")  # none asked for: allowed
    assert meta["counts"]["late_items"] == 0
    assert run_pipeline(fmnist_folder, out)["counts"]["late_items"] == 10
