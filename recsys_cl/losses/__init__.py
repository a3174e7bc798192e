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

__all__ = [
    "MASK_VALUE",
    "debiased_contrastive_loss",
    "logq_correction",
    "mask_accidental_hits",
    "mask_by",
    "nt_xent_loss",
    "retrieval_logits",
    "sampled_softmax_loss",
    "triplet_loss",
]
