"""Offline evaluation: full-ranking protocol and pure top-K metrics."""

from recsys_cl.eval.metrics import (
    coverage,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
)
from recsys_cl.eval.protocol import (
    EvalSet,
    build_eval_set,
    evaluate,
    interaction_matrix,
    masked_top_k,
    protocol_name,
)

__all__ = [
    "EvalSet",
    "build_eval_set",
    "coverage",
    "evaluate",
    "hit_rate_at_k",
    "interaction_matrix",
    "masked_top_k",
    "ndcg_at_k",
    "precision_at_k",
    "protocol_name",
    "recall_at_k",
    "reciprocal_rank",
]
