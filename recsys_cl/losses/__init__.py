"""Retrieval and contrastive losses: ``from recsys_cl.losses import sampled_softmax_loss``."""

from recsys_cl.losses.functional import (
    MASK_VALUE,
    debiased_contrastive_loss,
    logq_correction,
    mask_accidental_hits,
    mask_by,
    nt_xent_loss,
    retrieval_logits,
    sampled_softmax_loss,
    triplet_loss,
)
from recsys_cl.losses.hard_negatives import (
    append_mochi_negatives,
    hard_negative_topk,
    mochi_negatives,
)
from recsys_cl.losses.momentum import momentum_copy, momentum_update
from recsys_cl.losses.negative_queue import NegativeQueue

__all__ = [
    "MASK_VALUE",
    "NegativeQueue",
    "append_mochi_negatives",
    "debiased_contrastive_loss",
    "hard_negative_topk",
    "logq_correction",
    "mask_accidental_hits",
    "mask_by",
    "mochi_negatives",
    "momentum_copy",
    "momentum_update",
    "nt_xent_loss",
    "retrieval_logits",
    "sampled_softmax_loss",
    "triplet_loss",
]
