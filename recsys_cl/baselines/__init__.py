"""Non-neural baselines with one small API: ``fit(train_csr) -> self``,
``score(history_csr, user_index=None) -> (b, M) scores``.

ALS/BPR (``recsys_cl.baselines.implicit_models``) need the optional ``implicit`` package and are
imported lazily through :func:`make_baseline`.
"""

from recsys_cl.baselines.ease import EASE
from recsys_cl.baselines.itemknn import ItemKNN
from recsys_cl.baselines.popularity import Popularity
from recsys_cl.baselines.tuning import BASELINES, make_baseline, score_fn_for, tune_and_evaluate

__all__ = [
    "BASELINES",
    "EASE",
    "ItemKNN",
    "Popularity",
    "make_baseline",
    "score_fn_for",
    "tune_and_evaluate",
]
