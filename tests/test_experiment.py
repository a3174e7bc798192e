"""recsys_cl.experiment.prepare: the item table a time-ordered run sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_cl.config import DataConfig, RunConfig, SplitConfig
from recsys_cl.data.errors import DataError
from recsys_cl.experiment import prepare


def _movielens(tmp_path: Path) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    rows = [f"{u},{i},4.0,{t}" for u in range(1, 6) for i, t in ((1, 1), (2, 2), (3, 3), (4, 10 + u))]
    rows += [f"{u},5,4.0,{20 + u}" for u in range(1, 6)]  # item 5: first clicked late (cold)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},M{i} (2000),Drama\n" for i in range(1, 6))
    )
    # item 1 tagged before any click; item 5 tagged only after the training cutoff
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,early,0\n2,5,late,30\n3,1,later,30\n")
    return folder


def _tags(cfg: RunConfig) -> dict[int, list[str]]:
    items = prepare(cfg).clicks.items
    assert items is not None
    return dict(zip(items["item_id"].to_list(), items["tags"].to_list()))


def test_time_ordered_runs_read_item_tags_as_of_the_training_cutoff(tmp_path: Path) -> None:
    data = DataConfig(path=str(_movielens(tmp_path)))
    cold = RunConfig(data=data, split=SplitConfig(kind="cold_start", val_quantile=0.5, test_quantile=0.8))
    tags = _tags(cold)
    assert tags[1] == ["early"] and tags[5] == []  # 'later' and 'late' were applied after the cutoff
    temporal = RunConfig(data=data, split=SplitConfig(kind="temporal", val_quantile=0.5, test_quantile=0.8))
    assert _tags(temporal) == tags
    every = _tags(RunConfig(data=data, split=SplitConfig(kind="leave_last_out")))  # no global cutoff
    assert every[1] == ["early", "later"] and every[5] == ["late"]
    assert every[2] == []


def test_a_log_too_small_to_rank_or_evaluate_is_refused(tmp_path: Path) -> None:
    """Three clicks of one user: training would 'succeed' with every metric 0."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,4.0,2\n1,3,4.0,3\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n2,B (2000),Drama\n3,C (2000),Drama\n")
    with pytest.raises(DataError, match=r"only 1 items with training clicks to rank .*needs at least 2"):
        prepare(RunConfig(data=DataConfig(path=str(folder))))
