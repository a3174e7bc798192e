"""Retrieval and contrastive losses as small pure functions on logits and embeddings.

The training step composes them as a visible recipe, one named step per line (TFRS
``Retrieval.call``)::

    logits = retrieval_logits(user, items, temperature)        # (B, C)  s / tau
    logits = logq_correction(logits, log_q, w)                  # (B, C)  s / tau - w log q
    logits = mask_accidental_hits(logits, pos_ids, cand_ids)    # (B, C)
    logits = mask_by(logits, user_clicked)                      # (B, C)
    loss = sampled_softmax_loss(logits)                         # ()

Letters, project-wide: B batch, N sampled negatives, C = B + N candidate columns, D embedding
dim, M catalogue size. Candidate column ``i < B`` is the positive of row ``i`` (and an in-batch
negative of every other row); columns ``B:`` are sampled negatives shared by all rows.

Masked logits are set to :data:`MASK_VALUE`, a large *finite* negative number (as TFRS and
Merlin do), so a masked column gets exactly zero softmax probability and a zero, finite gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VALUE: float = float(torch.tensor(torch.finfo(torch.float32).min / 100.0))
"""Logit of a masked candidate: float32.min / 100 ~ -3.4e36 (TFRS ``MIN_FLOAT``), rounded to a
float32 so a masked float32 logit compares equal to it. Finite, so
``exp`` gives exactly 0 and gradients stay finite; far enough from float32.min that adding a
logQ offset or subtracting a row max cannot overflow to -inf."""


def _check_logits(logits: Tensor, name: str = "logits") -> tuple[int, int]:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be a (B, C) matrix, got shape {tuple(logits.shape)}")
    B, C = logits.shape
    if C < B:
        raise ValueError(
            f"{name} must have at least as many candidate columns as rows, because column i is "
            f"row i's positive (got B={B} rows and C={C} columns)"
        )
    return B, C


def _diagonal(B: int, C: int, device: torch.device) -> Tensor:
    """(B, C) bool, True at (i, i): each row's positive column."""
    eye = torch.zeros(B, C, dtype=torch.bool, device=device)
    idx = torch.arange(B, device=device)
    eye[idx, idx] = True
    return eye


def _check_mask(mask: Tensor, logits: Tensor, name: str) -> Tensor:
    if mask.shape != logits.shape:
        raise ValueError(
            f"{name} must have the shape of logits {tuple(logits.shape)}, got {tuple(mask.shape)}"
        )
    return mask.to(device=logits.device, dtype=torch.bool)


def retrieval_logits(user: Tensor, items: Tensor, temperature: float) -> Tensor:
    """Temperature-scaled dot-product scores of every user against every candidate item.

    ``logits[i, j] = <user_i, item_j> / temperature``. With L2-normalised towers the dot product
    is the cosine similarity.

    Args:
        user: user embeddings. Shape: (B, D).
        items: candidate item embeddings; rows ``:B`` are the positives of the B users, rows
            ``B:`` sampled negatives. Shape: (C, D).
        temperature: softmax temperature tau > 0.

    Returns:
        Logits. Shape: (B, C).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if user.dim() != 2 or items.dim() != 2 or user.shape[1] != items.shape[1]:
        raise ValueError(
            "user and items must be (B, D) and (C, D) with the same D "
            f"(got {tuple(user.shape)} and {tuple(items.shape)})"
        )
    return user @ items.T / temperature  # (B, D) @ (D, C) -> (B, C)


def logq_correction(logits: Tensor, log_q: Tensor, weight: float = 1.0) -> Tensor:
    """logQ sampling-bias correction: subtract each candidate's log sampling probability.

    Implements the corrected logit of Yi et al., "Sampling-Bias-Corrected Neural Modeling for
    Large Corpus Item Recommendations", RecSys 2019 (corrected logit): ``s_c(x, y) = s(x, y) - log p_y``.
    A popular item (large ``p``) is a negative more often than the softmax over the full corpus
    would weight it; subtracting ``log p`` lowers its logit relative to rare items so that it is
    "penalised less" per appearance.

    Order: this is applied **after** the temperature division, ``s / tau - log q``, as TFRS
    ``Retrieval.call`` does. (The paper has no temperature; ``(s - log q) / tau`` would be the
    other choice.)

    Partial correction: ``weight`` w scales the term, ``s / tau - w log q``. w = 1 is the full
    correction above, w = 0 none at all; in between trades the head (full logQ raises popular
    items' recall) against the tail (no logQ leaves popular items pushed down). Equivalently the
    sampling distribution is taken as ``q^w`` (up to a constant, which cancels).

    Args:
        logits: temperature-scaled scores. Shape: (B, C).
        log_q: log sampling probability, or log expected count among the batch's draws, of each
            candidate column; a constant shift of ``log_q`` does not change the softmax.
            Shape: (C,).
        weight: w >= 0, the strength of the correction (``loss.logq_weight``); 1 = full.

    Returns:
        Corrected logits ``logits - weight * log_q[None, :]``. Shape: (B, C).
    """
    if logits.dim() != 2 or log_q.shape != (logits.shape[1],):
        raise ValueError(
            f"log_q must have one entry per candidate column: logits {tuple(logits.shape)} "
            f"needs log_q of shape ({logits.shape[-1]},), got {tuple(log_q.shape)}"
        )
    if not bool(torch.isfinite(log_q).all()):
        raise ValueError(
            "log_q has non-finite entries (log of a zero probability?); give every candidate a "
            "positive sampling probability, e.g. by smoothing the item counts"
        )
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0 (1 = full logQ correction), got {weight}")
    return logits - weight * log_q.to(logits.dtype)[None, :]  # (B, C) - (1, C)


def mask_accidental_hits(logits: Tensor, pos_ids: Tensor, cand_ids: Tensor) -> Tensor:
    """Mask candidates that are the same item as the row's positive (accidental hits).

    Column ``j`` of row ``i`` is masked when ``cand_ids[j] == pos_ids[i]``, except the row's own
    positive column ``j == i``. Items are compared by id, so a duplicate of the positive among the
    other rows' positives (in-batch) and among the sampled negatives is masked. This is TFRS
    ``RemoveAccidentalHits`` and the ``tf.nn.compute_accidental_hits`` step of sampled softmax.

    Args:
        logits: scores. Shape: (B, C).
        pos_ids: item id of each row's positive, normally ``cand_ids[:B]``. Shape: (B,).
        cand_ids: item id of each candidate column. Shape: (C,).

    Returns:
        Logits with accidental hits set to :data:`MASK_VALUE`. Shape: (B, C).
    """
    B, C = _check_logits(logits)
    if pos_ids.shape != (B,) or cand_ids.shape != (C,):
        raise ValueError(
            f"accidental-hit masking needs pos_ids of shape ({B},) and cand_ids of shape ({C},) "
            f"for logits {tuple(logits.shape)}, got {tuple(pos_ids.shape)} and "
            f"{tuple(cand_ids.shape)}"
        )
    pos_ids, cand_ids = pos_ids.to(logits.device), cand_ids.to(logits.device)
    hit = pos_ids[:, None] == cand_ids[None, :]  # (B, C)
    hit &= ~_diagonal(B, C, logits.device)  # the positive itself stays
    return logits.masked_fill(hit, MASK_VALUE)


def mask_by(logits: Tensor, mask: Tensor) -> Tensor:
    """Mask arbitrary candidates, e.g. other items the row's user clicked (false negatives).

    The caller guarantees that a row's positive column is never in ``mask``; defensively the
    diagonal ``(i, i)`` is unmasked anyway, because a masked positive would make the loss
    meaningless. (A mask of "all the user's training clicks" does contain the positive.)

    Args:
        logits: scores. Shape: (B, C).
        mask: True where the candidate must not count as a negative. Shape: (B, C), bool.

    Returns:
        Logits with masked entries set to :data:`MASK_VALUE`. Shape: (B, C).
    """
    B, C = _check_logits(logits)
    mask = _check_mask(mask, logits, "mask") & ~_diagonal(B, C, logits.device)  # (B, C)
    return logits.masked_fill(mask, MASK_VALUE)


def sampled_softmax_loss(logits: Tensor) -> Tensor:
    """Softmax cross-entropy over in-batch (+ sampled) candidates, the positive of row i in column i.

    ``loss = -(1/B) sum_i log( exp(l_ii) / sum_j exp(l_ij) )`` — the batch softmax of Yi et al.
    2019 when ``logits`` are logQ-corrected, plain in-batch softmax otherwise. Masked columns
    (:data:`MASK_VALUE`) contribute exactly zero to the denominator. Mean over rows (TFRS sums;
    the mean keeps the learning rate independent of the batch size).

    Args:
        logits: scores whose column ``i`` is row ``i``'s positive. Shape: (B, C).

    Returns:
        Scalar loss. Shape: ().
    """
    B, _ = _check_logits(logits)
    labels = torch.arange(B, device=logits.device)  # (B,)
    return F.cross_entropy(logits, labels)


def debiased_contrastive_loss(
    logits: Tensor, tau_plus: float, temperature: float, valid: Tensor | None = None
) -> Tensor:
    """Debiased contrastive loss of Chuang et al., "Debiased Contrastive Learning", NeurIPS 2020
    (arXiv 2007.00224): the debiased objective with the clamp of the authors' code
    (``chingyaoc/DCL``, ``main.py``).

    Not to be confused with *Decoupled* contrastive learning (lightly's ``DCLLoss``). Per row i,
    with ``pos = exp(l_ii)``, the valid negatives ``j`` of the row and their count ``N_i``::

        Ng_i   = (-tau_plus * N_i * pos + sum_j exp(l_ij)) / (1 - tau_plus)
        Ng_i   = max(Ng_i, N_i * exp(-1 / temperature))
        loss   = mean_i -log(pos / (pos + Ng_i))

    ``tau_plus`` is the class prior: the probability that a "negative" is really a positive.
    With ``tau_plus = 0`` and an inactive clamp this is the in-batch softmax loss.

    ``N_i`` counts only *valid* negatives: the positive column and masked columns (logit
    :data:`MASK_VALUE` or ``valid == False``) are excluded from both the sum and ``N_i``.

    The clamp ``exp(-1/temperature)`` is the smallest ``exp(l)`` when ``l = cos / temperature``
    with ``cos >= -1``; it is exact only for cosine scores without logQ. Combining this loss with
    logQ (``logits = s / tau - log q``) is non-standard: treat it as an ablation.

    Numerics: everything is computed in a row-max-shifted space, ``exp(l - m_i)`` with ``m_i``
    the row's max over the positive and valid negatives, and the clamp shifted alike
    (``log N_i - 1/temperature - m_i``), so ``temperature = 0.05`` with logQ offsets of +15 (or
    ``temperature = 0.01``) does not overflow. A row with no valid negative has loss 0.

    Args:
        logits: scores already divided by ``temperature`` (and possibly logQ-corrected); column
            ``i`` is row ``i``'s positive. Shape: (B, C).
        tau_plus: class prior of false negatives, in [0, 1).
        temperature: the temperature the logits were divided by (only used by the clamp).
        valid: True where the column is a negative of the row. Defaults to
            ``logits > MASK_VALUE / 2``. The diagonal is always excluded. Shape: (B, C), bool.

    Returns:
        Scalar loss. Shape: ().
    """
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, C = _check_logits(logits)
    diag = _diagonal(B, C, logits.device)  # (B, C)
    neg = logits > MASK_VALUE / 2  # (B, C) masked entries never count
    if valid is not None:
        neg &= _check_mask(valid, logits, "valid")
    neg &= ~diag

    l_pos = logits.diagonal()  # (B,) positive logits l_ii
    # Row max over the positive and the valid negatives; a constant per row, so no gradient.
    m = logits.detach().masked_fill(~(neg | diag), float("-inf")).amax(dim=1)  # (B,)
    shifted = logits.masked_fill(~neg, float("-inf")) - m[:, None]  # (B, C), -inf off-negatives
    sum_neg = shifted.exp().sum(dim=1)  # (B,) sum_j exp(l_ij - m)
    pos = (l_pos - m).exp()  # (B,) exp(l_ii - m), in (0, 1]
    n = neg.sum(dim=1).to(logits.dtype)  # (B,) N_i

    ng = (-tau_plus * n * pos + sum_neg) / (1.0 - tau_plus)  # (B,) may be <= 0 before the clamp
    # log of the clamped Ng, in the shifted space: max(log Ng, log N - 1/t - m).
    log_ng_raw = torch.where(ng > 0, ng.clamp_min(torch.finfo(ng.dtype).tiny).log(), -math.inf)
    log_floor = n.log() - 1.0 / temperature - m  # (B,) -inf where N_i = 0
    log_ng = torch.maximum(log_ng_raw, log_floor)  # (B,)

    log_pos = l_pos - m  # (B,)
    # -log(pos / (pos + Ng)) = log(pos + Ng) - log(pos)
    return (torch.logaddexp(log_pos, log_ng) - log_pos).mean()


def triplet_loss(scores: Tensor, margin: float, valid: Tensor | None = None) -> Tensor:
    """Margin ranking (triplet) loss over every (row, valid negative) pair; a baseline.

    ``loss = mean_{(i, j) valid} relu(margin - s_ii + s_ij)``, the hinge of Weinberger & Saul's
    triplet loss (as in Schroff et al., FaceNet 2015) on similarities instead of distances.
    The mean runs over all valid pairs of the batch (not per row first).

    Args:
        scores: raw similarity scores (cosines; *not* divided by a temperature, no logQ);
            column ``i`` is row ``i``'s positive. Shape: (B, C).
        margin: required gap between the positive and each negative score, >= 0.
        valid: True where the column is a negative of the row. Defaults to
            ``scores > MASK_VALUE / 2``. The diagonal is always excluded. Shape: (B, C), bool.

    Returns:
        Scalar loss; 0 when there is no valid pair. Shape: ().
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    B, C = _check_logits(scores, "scores")
    neg = scores > MASK_VALUE / 2  # (B, C)
    if valid is not None:
        neg &= _check_mask(valid, scores, "valid")
    neg &= ~_diagonal(B, C, scores.device)
    s_pos = scores.diagonal()  # (B,)
    hinge = F.relu(margin - s_pos[:, None] + scores)  # (B, C)
    hinge = hinge.masked_fill(~neg, 0.0)
    return hinge.sum() / neg.sum().clamp_min(1)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised temperature-scaled cross-entropy (NT-Xent) of SimCLR / SimCSE.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020 (arXiv 2002.05709), Eq. (1), averaged over all 2B views. The 2B views are
    ``z = [z1; z2]``; view ``a``'s positive is the other view of the same example and its
    2B - 2 negatives are the views of the other examples::

        l(a, p) = -log( exp(z_a . z_p / t) / sum_{k != a} exp(z_a . z_k / t) )
        loss    = (1 / 2B) sum_a l(a, p(a))

    Symmetric in ``(z1, z2)``. The dot product is the cosine when the inputs are L2-normalised
    (the towers normalise when ``model.normalize``); this function does not normalise.

    Args:
        z1: embeddings of the first view. Shape: (B, D).
        z2: embeddings of the second view; row i is the same example as ``z1[i]``. Shape: (B, D).
        temperature: softmax temperature t > 0.

    Returns:
        Scalar loss. Shape: ().
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (B, D) with the same shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    B = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    self_sim = torch.eye(2 * B, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_sim, MASK_VALUE)  # a view is not its own negative
    idx = torch.arange(B, device=z.device)
    labels = torch.cat([idx + B, idx])  # (2B,) the other view of the same example
    return F.cross_entropy(logits, labels)
