"""Hard negatives: keep the hardest in-batch negatives (top-k) or synthesise harder ones (MoCHi).

Both act on logits that are already corrected and masked (``retrieval_logits`` ->
``logq_correction`` -> ``mask_accidental_hits`` -> ``mask_by``), so a masked column (an accidental
hit, an item the user clicked) is never "hard" and never mixed into a synthetic negative.

Letters: B rows, C candidate columns (column i is row i's positive), D dim, H the hardest
negatives per row that MoCHi mixes, S' synthetic negatives per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys_cl.losses.functional import MASK_VALUE, _check_logits, _diagonal


def hard_negative_topk(logits: Tensor, k: int) -> Tensor:
    """Keep each row's positive and its ``k`` hardest negatives; mask every other column.

    TFRS ``HardNegativeMining`` keeps the positive plus the ``k`` highest-logit negatives; here the
    matrix keeps its shape (other columns set to :data:`MASK_VALUE`) so column ``i`` stays row
    ``i``'s positive and every loss of :mod:`recsys_cl.losses.functional` applies unchanged.
    Already-masked columns rank last, so they are never kept ahead of a valid negative.

    Args:
        logits: corrected, masked logits; column ``i`` is row ``i``'s positive. Shape: (B, C).
        k: negatives kept per row, >= 1 (all of them when ``k >= C - 1``).

    Returns:
        Logits with all but the positive and the ``k`` hardest negatives masked. Shape: (B, C).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    B, C = _check_logits(logits)
    if k >= C - 1:
        return logits
    diag = _diagonal(B, C, logits.device)  # (B, C)
    hardness = logits.detach().masked_fill(diag, float("-inf"))  # the positive is not a negative
    top = hardness.topk(k, dim=1).indices  # (B, k)
    keep = diag.clone()
    keep.scatter_(1, top, True)  # (B, C)
    return logits.masked_fill(~keep, MASK_VALUE)


def mochi_negatives(
    query: Tensor,
    hardest: Tensor,
    n_mix: int,
    n_query_mix: int,
    beta_max: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Synthetic hard negatives of MoCHi (Kalantidis et al., "Hard Negative Mixing for Contrastive
    Learning", NeurIPS 2020, arXiv 2010.01028), Eq. (3) and (4).

    Per row, from its H hardest negatives ``n_1..n_H`` (hardest first):

    * ``n_mix`` mixes of two hardest, ``h = normalize(a * n_i + (1 - a) * n_j)``, ``a ~ U(0, 1)``;
    * ``n_query_mix`` mixes with the query, ``h = normalize(b * q + (1 - b) * n_j)``,
      ``b ~ U(0, beta_max)`` with ``beta_max <= 0.5``, so the negative part dominates.

    Everything is computed without gradient: the synthetic negatives are constants of the loss
    (the paper never backpropagates into the mixing); gradients reach the query through its dot
    product with them. For unit vectors, a query mix is at least as similar to the query as the
    negative it mixes (``q.h >= q.n_j``), and a hard mix of two negatives with non-negative
    similarities is at least as similar as the less similar of the two.

    Args:
        query: L2-normalised queries (user embeddings). Shape: (B, D).
        hardest: each row's hardest negatives, L2-normalised. Shape: (B, H, D).
        n_mix: number of negative-negative mixes, >= 0.
        n_query_mix: number of query-negative mixes, >= 0.
        beta_max: upper bound of the query weight, in (0, 0.5].
        generator: source of randomness (on the inputs' device).

    Returns:
        ``(synthetic, weights)``: the normalised synthetic negatives, shape (B, S', D) with
        S' = n_mix + n_query_mix (mixes first), detached; and the weight of each hardest negative
        in each mix (the query's weight is ``1 - weights.sum(-1)``), shape (B, S', H), so callers
        can derive a mix's logQ and whether it touched a masked column.
    """
    if query.dim() != 2 or hardest.dim() != 3 or hardest.shape[0] != query.shape[0] \
            or hardest.shape[2] != query.shape[1]:
        raise ValueError(
            "mochi_negatives needs query (B, D) and hardest (B, H, D), got "
            f"{tuple(query.shape)} and {tuple(hardest.shape)}"
        )
    if n_mix < 0 or n_query_mix < 0 or n_mix + n_query_mix < 1:
        raise ValueError(f"n_mix and n_query_mix must be >= 0 and not both 0, got {n_mix}, {n_query_mix}")
    if not 0.0 < beta_max <= 0.5:
        raise ValueError(f"beta_max must be in (0, 0.5], got {beta_max}")
    B, H, _ = hardest.shape
    dev = query.device
    with torch.no_grad():
        query, hardest = query.detach(), hardest.detach()
        rows = torch.arange(B, device=dev)[:, None]  # (B, 1)
        weights = []
        # negative-negative mixes: a * n_i + (1 - a) * n_j
        i = torch.randint(0, H, (B, n_mix), generator=generator, device=dev)  # (B, s)
        j = torch.randint(0, H, (B, n_mix), generator=generator, device=dev)  # (B, s)
        a = torch.rand(B, n_mix, generator=generator, device=dev)  # (B, s)
        w = torch.zeros(B, n_mix, H, device=dev)
        w[rows, torch.arange(n_mix, device=dev)[None, :], i] += a
        w[rows, torch.arange(n_mix, device=dev)[None, :], j] += 1 - a
        weights.append(w)
        # query-negative mixes: b * q + (1 - b) * n_j, b < beta_max <= 0.5
        jq = torch.randint(0, H, (B, n_query_mix), generator=generator, device=dev)  # (B, s')
        b = torch.rand(B, n_query_mix, generator=generator, device=dev) * beta_max  # (B, s')
        wq = torch.zeros(B, n_query_mix, H, device=dev)
        wq[rows, torch.arange(n_query_mix, device=dev)[None, :], jq] = 1 - b
        weights.append(wq)
        weight = torch.cat(weights, dim=1)  # (B, S', H)
        q_weight = torch.cat([torch.zeros(B, n_mix, device=dev), b], dim=1)  # (B, S')
        mixed = weight @ hardest + q_weight[..., None] * query[:, None, :]  # (B, S', D)
        synthetic = F.normalize(mixed, dim=-1)
    return synthetic, weight


def append_mochi_negatives(
    logits: Tensor,
    user: Tensor,
    items: Tensor,
    log_q: Tensor | None,
    temperature: float,
    n_hard: int,
    n_mix: int,
    n_query_mix: int,
    beta_max: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Append each row's MoCHi negatives as extra columns of ``logits``.

    The hardest ``n_hard`` negatives are ranked by the (corrected, masked) ``logits``. A synthetic
    column's logit is ``u . h / temperature - log q_h`` with ``log q_h`` the weighted mean of its
    constituents' ``log_q`` (weights renormalised over the negative part), so synthetic columns
    sit on the same logQ scale as the columns they come from. A mix that touches a masked column
    (fewer than ``n_hard`` valid negatives) is masked itself.

    Args:
        logits: corrected, masked logits; column ``i`` is row ``i``'s positive. Shape: (B, C).
        user: user embeddings; gradients flow into them. Shape: (B, D).
        items: embeddings of the C candidate columns. Shape: (C, D).
        log_q: logQ of each column, or None (no correction). Shape: (C,).
        temperature: the temperature ``logits`` were divided by.

    Returns:
        ``[logits, synthetic logits]``. Shape: (B, C + n_mix + n_query_mix).
    """
    B, C = _check_logits(logits)
    if items.shape[0] != C:
        raise ValueError(f"items must have one row per logits column ({C}), got {tuple(items.shape)}")
    h = min(n_hard, C - 1)
    if h < 1:
        return logits
    hardness = logits.detach().masked_fill(_diagonal(B, C, logits.device), float("-inf"))
    top = hardness.topk(h, dim=1)  # (B, H) hardest first
    valid = top.values > MASK_VALUE / 2  # (B, H)
    hardest = items.detach()[top.indices]  # (B, H, D)
    synthetic, weight = mochi_negatives(user, hardest, n_mix, n_query_mix, beta_max, generator)
    syn = torch.einsum("bd,bsd->bs", user, synthetic) / temperature  # (B, S') grad into user only
    if log_q is not None:
        lq = log_q.to(logits.dtype)[top.indices]  # (B, H)
        syn = syn - (weight @ lq[..., None]).squeeze(-1) / weight.sum(-1)  # weighted mean log q
    touched_masked = ((weight > 0) & ~valid[:, None, :]).any(-1)  # (B, S')
    syn = syn.masked_fill(touched_masked, MASK_VALUE)
    return torch.cat([logits, syn], dim=1)  # (B, C + S')
