import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_cl.baselines import EASE, ItemKNN, Popularity, make_baseline, score_fn_for, tune_and_evaluate
from recsys_cl.eval.protocol import build_eval_set, evaluate, interaction_matrix
from recsys_cl.features.vocab import Vocab


def planted_clicks(n_users=120, n_groups=4, items_per_group=15, per_user=9, seed=0):
    """Block-diagonal taste (implicit's checkerboard idea with 4 blocks): user u clicks
    ``per_user`` items of group ``u % n_groups`` plus one random item, in random time order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        g = u % n_groups
        own = rng.choice(items_per_group, size=per_user, replace=False) + g * items_per_group
        noise = rng.integers(n_groups * items_per_group)
        seq = rng.permutation(np.append(own, noise))
        rows += [(u, int(i), t) for t, i in enumerate(seq)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


@pytest.fixture(scope="module")
def planted():
    df = planted_clicks().with_columns(
        (pl.col("timestamp").rank("ordinal", descending=True).over("user_id") - 1).alias("from_end")
    )
    train = df.filter(pl.col("from_end") >= 2)
    val = df.filter(pl.col("from_end") == 1)
    test = df.filter(pl.col("from_end") == 0)
    items = Vocab.from_values(train["item_id"])
    users = Vocab.from_values(train["user_id"])
    x = interaction_matrix(train, users, items)
    val_set = build_eval_set(train, val, items, users, "planted|val")
    test_set = build_eval_set(pl.concat([train, val]), test, items, users, "planted|test")
    return x, val_set, test_set


def test_ease_and_itemknn_beat_popularity_on_planted_blocks(planted):
    x, _, test_set = planted
    recall = {}
    for name, model in [("pop", Popularity()), ("knn", ItemKNN(k=10)), ("ease", EASE(lam=10.0))]:
        recall[name] = evaluate(score_fn_for(model.fit(x), test_set), test_set, ks=(5,))["recall@5"]
    # in-block candidates: ~7 unclicked items, so a block-aware model finds ~5/7 of the targets;
    # popularity ignores the blocks (~5/50)
    assert recall["pop"] < 0.3
    assert recall["ease"] > recall["pop"] + 0.3
    assert recall["knn"] > recall["pop"] + 0.3


def test_ease_matches_numpy_formula():
    rng = np.random.default_rng(0)
    x = (rng.random((12, 7)) < 0.4).astype(np.float64)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(7))
    b = np.eye(7) - p / np.diag(p)[None, :]  # Steck 2019 Eq. 8: B = I - P diagMat(1 / diag(P))
    np.testing.assert_allclose(np.diag(b), 0, atol=1e-12)
    model = EASE(lam=lam).fit(sp.csr_matrix(x))
    np.testing.assert_allclose(model.B, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(sp.csr_matrix(x[:3])), x[:3] @ b, rtol=1e-4, atol=1e-6)


def test_itemknn_matches_dense_cosine_and_prunes_to_k():
    rng = np.random.default_rng(1)
    x = (rng.random((15, 6)) < 0.5).astype(np.float64)
    x[0] = 1  # every item has a click
    norms = np.sqrt(x.sum(0))
    cos = (x.T @ x) / (np.outer(norms, norms) + 1.0)  # shrink = 1
    np.fill_diagonal(cos, 0)
    full = ItemKNN(k=5, shrink=1.0, block_size=4).fit(sp.csr_matrix(x))  # k = M - 1: no pruning
    np.testing.assert_allclose(full.S.toarray(), cos, rtol=1e-5)
    one = ItemKNN(k=1, shrink=1.0).fit(sp.csr_matrix(x))  # column j keeps its best neighbour
    s = one.S.toarray()
    assert np.all((s > 0).sum(0) == 1)
    np.testing.assert_allclose(s.max(0), cos.max(0), rtol=1e-5)
    votes = ItemKNN(k=1, shrink=1.0, prune="votes").fit(sp.csr_matrix(x))
    np.testing.assert_allclose(votes.S.toarray(), s.T)


def test_popularity_counts_and_shape():
    x = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0]], dtype=np.float32))
    model = Popularity().fit(x)
    scores = model.score(sp.csr_matrix((4, 3), dtype=np.float32))
    assert scores.shape == (4, 3) and scores[0].tolist() == [2, 0, 1]


def test_api_errors():
    x = sp.csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        EASE().score(x)
    with pytest.raises(ValueError, match="item columns"):
        ItemKNN(k=1).fit(x).score(sp.csr_matrix((1, 4)))
    with pytest.raises(ValueError, match="max_items"):
        EASE(max_items=2).fit(x)
    with pytest.raises(ValueError, match="scipy.sparse"):
        Popularity().fit(np.eye(3))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("svd")


def test_tune_and_evaluate_picks_best_validation_ndcg(planted):
    x, val_set, test_set = planted
    res = tune_and_evaluate("ease", x, val_set, test_set, {"lam": [1.0, 10.0, 1e7]}, ks=(10, 20))
    by_val = [v["ndcg@10"] for _, v in res["val_by_params"]]
    assert res["params"] == res["val_by_params"][int(np.argmax(by_val))][0]
    again = evaluate(score_fn_for(res["model"], test_set), test_set, ks=(10, 20))
    assert again == res["test"]  # test metrics come from the model picked on validation, no refit
    assert set(res["test"]) >= {"recall@10", "ndcg@20", "mrr", "coverage@20", "n_users"}
    assert res["test"]["n_users"] == test_set.n_users


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_implicit_models(planted, name):
    pytest.importorskip("implicit")
    x, _, test_set = planted
    model = make_baseline(name, factors=8, iterations=30, random_state=0).fit(x)
    scores = score_fn_for(model, test_set)(np.arange(5))
    assert scores.shape == (5, test_set.n_items) and np.isfinite(scores).all()
    out = evaluate(score_fn_for(model, test_set), test_set, ks=(5,))
    pop = evaluate(score_fn_for(Popularity().fit(x), test_set), test_set, ks=(5,))
    assert out["recall@5"] > pop["recall@5"]
    if name == "bpr":
        with pytest.raises(ValueError, match="train-user row"):
            model.score(test_set.history[:2], np.array([0, -1]))


def test_bpr_default_is_reproducible(planted):
    # implicit's multi-threaded BPR (num_threads=0) varied run to run (recall@5 0.058..0.15 here):
    # by default BPR trains on one thread, so a fixed random_state repeats the run
    pytest.importorskip("implicit")
    x, _, test_set = planted
    runs = [evaluate(score_fn_for(make_baseline("bpr", factors=8, iterations=30).fit(x), test_set), test_set,
                     ks=(5,)) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
