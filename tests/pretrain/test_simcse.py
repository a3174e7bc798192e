import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from text_fixture import synthetic_movies, write_fake_books, write_fake_movielens

from recsys_cl.config import load_config
from recsys_cl.data.errors import DataError
from recsys_cl.features.text import item_texts
from recsys_cl.pretrain.config import SimCSEConfig
from recsys_cl.pretrain.neighbours import shared_label_recall_at_k
from recsys_cl.pretrain.simcse import (
    alignment,
    chance_shared_label_rate,
    genre_matrix,
    mean_pair_sq_distance,
    pretrain_simcse,
    run_simcse,
    simcse_loss,
    split_held_out,
    uniformity,
)
from recsys_cl.towers.text_encoder import (
    load_text_encoder,
    make_tiny_text_encoder,
    tokenize,
)


@pytest.fixture(scope="module")
def movies_split() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return split_held_out(synthetic_movies(200), eval_size=40, seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, movies_split: tuple[pl.DataFrame, ...]) -> Path:
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_simcse"), item_texts(movies_split[2]))


def _cfg(tiny_dir: Path, *extra: str) -> SimCSEConfig:
    base = [f"model.path={tiny_dir}", "data.max_texts=0", "train.progress=false", "train.epochs=4",
            "train.batch_size=16", "train.lr=0.0003", "eval.eval_size=40", "eval.k=5",
            "train.trainable_layers=null"]  # a random encoder: train everything, embeddings included
    return load_config(None, SimCSEConfig, [*base, *extra])


def _rand_unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_alignment_and_uniformity_hand_worked() -> None:
    e = np.eye(2, dtype=np.float32)
    assert alignment(e, e) == 0.0
    assert alignment(e, e[::-1]) == pytest.approx(2.0)  # ||e1 - e2||^2 = 2
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)  # log exp(-2 * 4)
    with pytest.raises(ValueError, match="same shape"):
        alignment(e, e[:1])


@pytest.mark.parametrize("n,d", [(2, 3), (7, 4), (30, 8)])
def test_uniformity_and_mean_distance_match_a_loop(n: int, d: int) -> None:
    x = _rand_unit(n, d, seed=n)
    pairs = [float(np.sum((x[i] - x[j]) ** 2)) for i, j in itertools.combinations(range(n), 2)]
    assert uniformity(x) == pytest.approx(np.log(np.mean(np.exp(-2.0 * np.array(pairs)))), rel=1e-5)
    assert mean_pair_sq_distance(x) == pytest.approx(np.mean(pairs), rel=1e-5)


def test_genre_recall_hand_worked() -> None:
    items = pl.DataFrame({"genres": [["a"], ["a", "b"], ["b"], ["c"]]})
    g = genre_matrix(items)  # columns a, b, c
    assert g.tolist() == [[True, False, False], [True, True, False], [False, True, False], [False, False, True]]
    # on a line: 0 ~ 1 ~ 2 ~ 3; the nearest other row of 0 is 1 (shares a), of 1 is 0 or 2 (both share),
    # of 2 is 1 (shares b), of 3 is 2 (shares nothing)
    angles = np.array([0.0, 0.3, 0.6, 0.9])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    assert shared_label_recall_at_k(v, g, k=1) == pytest.approx(3 / 4)
    # random neighbours: row 0 shares with 1 of 3, row 1 with 2 of 3, row 2 with 1 of 3, row 3 with 0
    assert chance_shared_label_rate(g) == pytest.approx((1 + 2 + 1 + 0) / 12)


def test_held_out_split(movies_split: tuple[pl.DataFrame, ...]) -> None:
    test, validation, train = movies_split
    assert test.height == validation.height == 40 and train.height == 120
    ids = [set(df["item_id"].to_list()) for df in movies_split]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert (test["genres"].list.len() > 0).all() and (validation["genres"].list.len() > 0).all()
    assert split_held_out(synthetic_movies(200), 40, 0)[0].equals(test)  # seeded
    with pytest.raises(DataError, match=r"only 200 movies have genres.*lower eval.eval_size below 100"):
        split_held_out(synthetic_movies(200), 100, 0)
    with pytest.raises(DataError, match="needs a genres column of lists of strings"):
        split_held_out(pl.DataFrame({"title": ["x"]}), 1, 0)


def test_simcse_views_differ_only_through_dropout(tiny_dir: Path) -> None:
    enc, tok = load_text_encoder(tiny_dir)
    batch = tokenize(tok, ["space robot", "love letters", "ghost night"], 16)
    args = (batch["input_ids"], batch["attention_mask"], 0.05)
    with torch.no_grad():
        enc.eval()  # no dropout: the two views are identical
        eval_loss = simcse_loss(enc, *args).item()
        enc.train()
        torch.manual_seed(0)
        train_loss = simcse_loss(enc, *args).item()
        torch.manual_seed(0)
        assert simcse_loss(enc, *args).item() == train_loss  # the noise is torch's seeded RNG
    assert train_loss > eval_loss  # dropout moved each view away from its pair


def test_simcse_lowers_loss_and_improves_relative_alignment(
    tiny_dir: Path, movies_split: tuple[pl.DataFrame, ...], tmp_path: Path
) -> None:
    test, _, train = movies_split
    result = run_simcse(_cfg(tiny_dir), item_texts(train), test, tmp_path / "enc")
    losses, before, after = result["losses"], result["baseline_metrics"], result["metrics"]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert set(before) == set(after) == {"alignment", "alignment_ratio", "uniformity", "genre_recall@5"}
    # The random init maps every text close together (raw alignment ~0.03, uniformity ~-0.08);
    # SimCSE spreads the texts while keeping each movie's two descriptions relatively close.
    assert after["uniformity"] < before["uniformity"] - 0.1
    assert after["alignment_ratio"] < before["alignment_ratio"] - 0.05
    assert result["sizes"] == {"train_texts": 120, "eval_movies": 40, "steps": 28}
    sims = result["similarities"]  # the cosines behind the logged histogram
    assert list(sims) == ["before SimCSE", "after SimCSE"]
    for series in sims.values():
        assert list(series) == ["same movie, without / with genres", "share a genre", "share no genre"]
        assert len(series["same movie, without / with genres"]) == 40
        assert len(series["share a genre"]) + len(series["share no genre"]) == 20_000
        assert all(np.all(np.abs(c) <= 1 + 1e-6) for c in series.values())
    d = result["genre_recall_delta"]  # paired over the same 40 held-out movies
    assert d["delta"] == pytest.approx(after["genre_recall@5"] - before["genre_recall@5"])
    assert d["low"] <= d["delta"] <= d["high"]
    enc, _ = load_text_encoder(result["encoder_dir"])  # the saved artifact loads
    assert enc.model.config.hidden_dropout_prob == 0.1


def test_pretraining_is_seeded_and_max_steps_caps(tiny_dir: Path, movies_split: tuple[pl.DataFrame, ...]) -> None:
    texts = item_texts(movies_split[2])
    cfg = _cfg(tiny_dir, "train.epochs=2", "train.max_steps=9")

    def run() -> list[float]:
        torch.manual_seed(cfg.train.seed)
        enc, tok = load_text_encoder(tiny_dir)
        seen: list[tuple[int, float]] = []
        losses = pretrain_simcse(enc, tok, texts, cfg.train, 16, lambda e, m: seen.append((e, m["train/steps"])))
        assert seen == [(1, 7.0), (2, 9.0)]  # epochs from 1; 120 // 16 = 7 steps, then 2 more
        return losses

    first = run()
    assert len(first) == 2 and first == run()
    with pytest.raises(ValueError, match="at least 2 training texts"):
        pretrain_simcse(*load_text_encoder(tiny_dir), ["one"], cfg.train, 16)


def test_trainable_layers_keeps_the_lower_layers_as_loaded(
    tiny_dir: Path, movies_split: tuple[pl.DataFrame, ...]
) -> None:
    cfg = _cfg(tiny_dir, "train.trainable_layers=1", "train.max_steps=3")
    enc, tok = load_text_encoder(tiny_dir)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    pretrain_simcse(enc, tok, item_texts(movies_split[2]), cfg.train, 16)
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.encoder.layer.1.") for n in changed)


def test_extra_text_rows_naming_held_out_movies_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A movies file given as data.extra_text would train on the evaluation movies' titles."""
    from recsys_cl.pretrain.config import TextDataConfig, TextEvalConfig
    from recsys_cl.pretrain.simcse import load_simcse_data

    folder = write_fake_movielens(tmp_path / "ml", n=120)
    books = write_fake_books(tmp_path / "books.csv", n=10)
    ev = TextEvalConfig(eval_size=20)
    clean = load_simcse_data(TextDataConfig(path=str(folder), extra_text=str(books)), ev)
    assert clean.sizes["extra_texts"] == 10 and clean.sizes["extra_texts_held_out_dropped"] == 0

    leaky = load_simcse_data(TextDataConfig(path=str(folder), extra_text=str(folder / "movies.csv")), ev)
    held_out = set(leaky.test["title"]) | set(leaky.validation["title"])
    naming_held_out = sum(t in held_out for t in synthetic_movies(120)["title"])  # 40 + trained twins
    assert naming_held_out >= 40
    assert leaky.sizes["extra_texts_held_out_dropped"] == naming_held_out
    assert leaky.sizes["extra_texts"] == 120 - naming_held_out
    assert not held_out & set(leaky.texts)  # movies.csv rows become their bare titles
    assert f"dropped {naming_held_out} of 120 rows whose title is a held-out movie's" in caplog.text
    assert "Most rows: is it a movies file" not in caplog.text  # a third of the rows here

    # a book whose title + year, case or spacing aside, is a held-out movie's title is dropped too
    title = clean.test["title"][0]  # e.g. "Kiss Heart (1951)"
    bare, year = title.rsplit(" (", 1)
    variants = tmp_path / "variants.csv"
    variants.write_text("book_id,authors,original_publication_year,title\n"
                        f"1,A,{year.rstrip(')')}.0,{bare}\n"
                        f"2,B,,{title.upper()}\n"
                        f"3,C,,{title.replace(' ', '  ')}\n"
                        "4,D,1900.0,Nothing Held Out\n")
    kept = load_simcse_data(TextDataConfig(path=str(folder), extra_text=str(variants)), ev)
    assert kept.sizes["extra_texts_held_out_dropped"] == 3 and kept.texts[-1] == "Nothing Held Out (1900). Authors: D"
