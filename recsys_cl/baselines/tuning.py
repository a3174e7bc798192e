"""Pick a baseline's hyperparameters on validation NDCG@10, then report test metrics."""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from recsys_cl.baselines.ease import EASE
from recsys_cl.baselines.itemknn import ItemKNN
from recsys_cl.baselines.popularity import Popularity
from recsys_cl.eval.protocol import DEFAULT_KS, EvalSet, evaluate


def _implicit(name: str) -> Callable[..., Any]:
    def make(**params: Any) -> Any:
        from recsys_cl.baselines import implicit_models

        return getattr(implicit_models, name)(**params)

    return make


BASELINES: dict[str, Callable[..., Any]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "als": _implicit("ALS"),
    "bpr": _implicit("BPR"),
}
SELECT_BY = "ndcg@10"


def make_baseline(name: str, **params: Any) -> Any:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name](**params)


def score_fn_for(model: Any, eval_set: EvalSet) -> Callable[[np.ndarray], np.ndarray]:
    """Adapter from a baseline's ``score(history, user_index)`` to :func:`evaluate`'s score_fn."""
    return lambda rows: model.score(eval_set.history[rows], eval_set.user_index[rows])


def _grid_points(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | None) -> list[dict]:
    if grid is None:
        return [{}]
    if isinstance(grid, Mapping):
        keys = list(grid)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))] or [{}]
    return [dict(p) for p in grid] or [{}]


def tune_and_evaluate(
    name: str,
    train_csr: sp.csr_matrix,
    val_set: EvalSet,
    test_set: EvalSet,
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | None = None,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Fit ``name`` on ``train_csr`` for every grid point, keep the best by validation NDCG@10
    (first wins ties), and evaluate that same fitted model on ``test_set`` (no refit on train + val;
    the test fold-in history, train + val clicks, is already in ``test_set.history``).

    Args:
        grid: ``{"lam": [10, 50]}`` (cartesian product) or a list of parameter dicts.
    Returns:
        ``{"model", "params", "val", "test", "val_by_params", "fit_seconds", "protocol_val",
        "protocol_test"}``.
    """
    ks = tuple(ks)
    if 10 not in ks:
        raise ValueError(f"ks must contain 10 (selection is by {SELECT_BY}), got {ks}")
    if train_csr.shape[1] != val_set.n_items or train_csr.shape[1] != test_set.n_items:
        raise ValueError(
            f"train has {train_csr.shape[1]} items, val set {val_set.n_items}, test set "
            f"{test_set.n_items}; build all from the same catalogue (train item vocab)"
        )
    best: tuple[float, dict, Any, dict, float] | None = None
    tried: list[tuple[dict, dict]] = []
    for params in _grid_points(grid):
        t0 = time.perf_counter()
        model = make_baseline(name, **params).fit(train_csr)
        fit_s = time.perf_counter() - t0
        val = evaluate(score_fn_for(model, val_set), val_set, ks)
        tried.append((params, val))
        if best is None or val[SELECT_BY] > best[0]:
            best = (val[SELECT_BY], params, model, val, fit_s)
    assert best is not None
    _, params, model, val, fit_s = best
    test = evaluate(score_fn_for(model, test_set), test_set, ks)
    return {
        "name": name,
        "params": params,
        "val": val,
        "test": test,
        "val_by_params": tried,
        "fit_seconds": fit_s,
        "protocol_val": val_set.protocol,
        "protocol_test": test_set.protocol,
        "model": model,
    }
