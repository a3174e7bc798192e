"""Fold a new item's first clicks into its vector, without retraining.

A cold item (no click before the training cutoff) has no ID vector; its item-tower vector ``c_i``
comes from its content alone. Once people start clicking it, those clicks say more about who wants it
than a title does. Folding in adds the user-tower vectors of the people who clicked it:

    v_i = c_i + step * sum over clicks (u, i) of q_u

This is one gradient-ascent step on the item's vector for the positive term of the dot-product
objective, ``sum_u q_u . v_i``, starting from the content vector. The sum is not normalised, so every
click grows the vector along what its clickers share. An item clicked by many people then scores high
for most users, the way Popularity ranks it, and who clicked it decides for whom it scores highest.
``step`` = 0 leaves the content vectors as they are.

Scoring stays a plain dot product ``q_u . v_i``, so folded vectors go into any index like the others.
Only the vectors of items that *had* no training clicks should be folded: for the others, the ID
vector has already learned from their clicks, and folding them in again would count them twice.
"""

from __future__ import annotations

import torch

LOGITS_BUDGET = 2**25
"""Logits held at once when scoring clicks against many items (128 MB in float32): a block is
``LOGITS_BUDGET // M`` clicks, so memory stays flat as the catalogue grows."""


def _block(chunk_size: int | None, width: int) -> int:
    return chunk_size if chunk_size is not None else max(1, LOGITS_BUDGET // max(width, 1))


def fold_in_clicks(
    item_vectors: torch.Tensor,
    user_vectors: torch.Tensor,
    click_items: torch.Tensor,
    click_users: torch.Tensor,
    step: float = 1.0,
) -> torch.Tensor:
    """Item vectors with their clickers' user vectors added, scaled by ``step``.

    Args:
        item_vectors: (M, D) content vectors of the items (item tower outputs).
        user_vectors: (U, D) user-tower vectors of the clickers.
        click_items: (N,) int64, row of ``item_vectors`` for each click.
        click_users: (N,) int64, row of ``user_vectors`` for each click (repeat clicks count again).
        step: weight of one click, >= 0.

    Returns:
        (M, D): ``item_vectors[i] + step * sum(user_vectors[click_users[n]] for n with click_items[n] == i)``;
        a new tensor, the inputs are not changed.

    Raises:
        ValueError: shapes that do not fit together, an index out of range, or a negative step.
    """
    if item_vectors.dim() != 2 or user_vectors.dim() != 2 or item_vectors.shape[1] != user_vectors.shape[1]:
        raise ValueError(
            f"fold-in needs item vectors (M, D) and user vectors (U, D) of the same D; got "
            f"{tuple(item_vectors.shape)} and {tuple(user_vectors.shape)}"
        )
    if click_items.shape != click_users.shape or click_items.dim() != 1:
        raise ValueError(
            f"fold-in needs one item row and one user row per click, (N,) each; got "
            f"{tuple(click_items.shape)} and {tuple(click_users.shape)}"
        )
    if not step >= 0:
        raise ValueError(f"fold-in step must be >= 0 (0 = content vectors only); got {step}")
    for name, idx, n in (("item", click_items, item_vectors.shape[0]), ("user", click_users, user_vectors.shape[0])):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"fold-in: {name} rows must be in [0, {n}); got {int(idx.min())}..{int(idx.max())}")
    out = item_vectors.clone()
    if click_items.numel():
        out.index_add_(0, click_items.long(), user_vectors[click_users.long()].to(out.dtype), alpha=step)
    return out


def fixed_log_partition(
    item_vectors: torch.Tensor,
    rows: torch.Tensor,
    user_vectors: torch.Tensor,
    click_users: torch.Tensor,
    temperature: float,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The part of each click's softmax normaliser that fitting ``rows`` does not change.

    ``A_n = log sum_{j not in rows} exp(q_{u_n} . v_j / temperature)``; ``-inf`` when every item is in ``rows``.

    Args:
        item_vectors: (M, D); rows: (R,) int64 distinct rows left out (the vectors being fitted).
        user_vectors: (U, D); click_users: (N,) int64 row of the clicker of each click.
        chunk_size: users per (chunk, M) logits block; None: :data:`LOGITS_BUDGET` // M.

    Returns:
        (N,) float, computed in one pass over the M items for each distinct clicker (a user's clicks
        share one value), so it costs (distinct clickers) x M, not N x M.
    """
    fixed = torch.ones(item_vectors.shape[0], dtype=torch.bool)
    fixed[rows] = False
    others = item_vectors[fixed]  # (M - R, D)
    users, inverse = torch.unique(click_users, return_inverse=True)  # (C,), (N,)
    per_user = torch.empty(len(users), dtype=item_vectors.dtype)
    block = _block(chunk_size, len(others))
    for s in range(0, len(users), block):
        q = user_vectors[users[s : s + block]]  # (c, D)
        per_user[s : s + block] = torch.logsumexp(q @ others.T / temperature, dim=1)
    return per_user[inverse]


def softmax_gradient(
    item_vectors: torch.Tensor,
    rows: torch.Tensor,
    user_vectors: torch.Tensor,
    click_items: torch.Tensor,
    click_users: torch.Tensor,
    temperature: float,
    chunk_size: int | None = None,
    fixed: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Gradient of the mean full-softmax cross-entropy of the clicks w.r.t. the vectors of ``rows``.

    ``L = -1/W sum_n w_n log softmax_j(q_{u_n} . v_j / temperature)[i_n]`` over all M items, so
    ``dL/dv_r = 1/(W temperature) sum_n w_n (p_n(r) - [i_n = r]) q_{u_n}``, with ``W = sum_n w_n``
    (every ``w_n`` = 1 without ``weights``: the plain mean over the N clicks).

    The softmax depends on the clicker only, so it is computed once per distinct clicker, weighted
    by that user's clicks: ``sum_u c_u p_u(r) q_u`` with ``c_u = sum_{n: u_n = u} w_n``. A user with
    five clicks in the window costs one row of logits, not five.

    Args:
        item_vectors: (M, D) every item's vector (the softmax runs over all of them).
        rows: (R,) int64 distinct rows of ``item_vectors`` to differentiate.
        user_vectors: (U, D); click_items, click_users: (N,) int64 rows of items / users, one per click.
        chunk_size: distinct clickers per logits block, (chunk, M) or with ``fixed`` (chunk, R); None:
            the :data:`LOGITS_BUDGET` over that width.
        fixed: (N,) :func:`fixed_log_partition` of the same vectors outside ``rows``, when known: then
            each step scores only the R rows, ``O(C R D)`` for C distinct clickers instead of ``O(C M D)``,
            with the same result.
        weights: (N,) float >= 0, each click's weight (e.g. the inverse of its sampling rate); None: 1 each.

    Returns:
        ((R, D) gradient, the loss L as a float); ((R, D) zeros, 0.0) without clicks.
    """
    where = torch.full((item_vectors.shape[0],), -1, dtype=torch.long)
    where[rows] = torch.arange(len(rows))
    grad = torch.zeros(len(rows), item_vectors.shape[1], dtype=item_vectors.dtype)
    n = int(click_items.numel())
    w = torch.ones(n, dtype=item_vectors.dtype) if weights is None else weights.to(item_vectors.dtype)  # (N,)
    total_weight = float(w.sum()) if n else 0.0
    if n == 0 or total_weight <= 0:
        return grad, 0.0
    users, inverse = torch.unique(click_users, return_inverse=True)  # (C,), (N,)
    mass = torch.zeros(len(users), dtype=w.dtype).index_add_(0, inverse, w)  # (C,): c_u
    fixed_u = None if fixed is None else torch.empty(len(users), dtype=fixed.dtype).scatter_(0, inverse, fixed)
    total = 0.0
    block = _block(chunk_size, item_vectors.shape[0] if fixed is None else len(rows))
    for s in range(0, len(users), block):
        q = user_vectors[users[s : s + block]]  # (c, D)
        if fixed_u is None:
            logits = q @ item_vectors.T / temperature  # (c, M)
            log_z = torch.logsumexp(logits, dim=1)  # (c,)
            coef = (logits[:, rows] - log_z[:, None]).exp()  # (c, R): p_u(r)
        else:
            logits = q @ item_vectors[rows].T / temperature  # (c, R)
            log_z = torch.logaddexp(fixed_u[s : s + block], torch.logsumexp(logits, dim=1))  # (c,)
            coef = (logits - log_z[:, None]).exp()  # (c, R): p_u(r)
        c = mass[s : s + block]
        total += float((c * log_z).sum())
        grad += coef.T @ (c[:, None] * q)
    # each click's own item: - w_n q_{u_n} on the fitted rows, - w_n s_n in the loss
    q_click = user_vectors[click_users]  # (N, D)
    total -= float((w * (q_click * item_vectors[click_items]).sum(1)).sum()) / temperature
    hit = where[click_items] >= 0
    grad.index_add_(0, where[click_items[hit]], w[hit, None] * q_click[hit], alpha=-1.0)
    return grad / (total_weight * temperature), total / total_weight


def fit_new_items(
    item_vectors: torch.Tensor,
    rows: torch.Tensor,
    user_vectors: torch.Tensor,
    click_items: torch.Tensor,
    click_users: torch.Tensor,
    temperature: float,
    normalize: bool = True,
    steps: int = 100,
    lr: float = 0.05,
    reuse_fixed: bool = True,
    click_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit the vectors of ``rows`` (new items) to recent clicks under the model's own objective.

    Minimises the full-softmax cross-entropy of the clicks (:func:`softmax_gradient`) over the vectors
    of ``rows`` only; every other item keeps its vector and acts as a negative. Their part of each
    click's normaliser is computed once (:func:`fixed_log_partition`), so a step costs ``O(N R D)``,
    not ``O(N M D)``: exact, and cheap at any catalogue size. Unlike the summed
    fold-in (:func:`fold_in_clicks`), whose vector grows with every click and outranks trained items,
    the fitted vector competes with them the way a trained item does: the clicks should include the
    other items' clicks of the same period (they push the new items away from users who clicked
    something else). Adam from the current vectors (a zero vector starts at a tiny fixed random
    direction); with ``normalize`` the vectors stay on the unit sphere, like an L2-normalised tower's.

    Args:
        item_vectors: (M, D) every item's vector; rows: (R,) int64 distinct rows to fit.
        user_vectors: (U, D); click_items, click_users: (N,) int64, one per click (any item).
        temperature: the training loss's softmax temperature (``loss.temperature``).
        reuse_fixed: False rescores all M items at every step (``O(N M D)``), the reference the
            benchmark (``notebooks/07_fold_in_fit_cost.py``) times the default against.
        click_weights: (N,) float >= 0 per click (the loss is their weighted mean); None: 1 each. When the
            other items' clicks are a sample, weighting them by the inverse sampling rate keeps the
            objective that of all the clicks.

    Returns:
        (R, D) fitted vectors (``item_vectors`` is not changed).

    Raises:
        ValueError: shapes that do not fit together, rows or clicks out of range, steps < 0,
            temperature or lr not > 0.
    """
    fold_in_clicks(item_vectors, user_vectors, click_items, click_users, 0.0)  # shape and range checks
    if rows.dim() != 1 or (rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= item_vectors.shape[0])):
        raise ValueError(
            f"fit_new_items: rows must be (R,) in [0, {item_vectors.shape[0]}); got {rows.tolist()[:5]}..."
        )
    if not (temperature > 0 and lr > 0 and steps >= 0):
        raise ValueError(f"fit_new_items needs temperature > 0, lr > 0, steps >= 0; got {temperature}, {lr}, {steps}")
    if click_weights is not None and (
        click_weights.shape != click_items.shape or not bool(torch.isfinite(click_weights).all())
        or (click_weights.numel() and float(click_weights.min()) < 0)
    ):
        raise ValueError(
            f"fit_new_items: click_weights must be (N,) = {tuple(click_items.shape)}, finite and >= 0; got shape "
            f"{tuple(click_weights.shape)}"
        )
    rows = rows.long()
    vectors = item_vectors.clone()
    p = vectors[rows].clone()
    zero = p.norm(dim=1) < 1e-12
    if zero.any():  # no content: start from a tiny fixed direction (the gradient of 0 / |0| is undefined)
        p[zero] = 1e-3 * torch.randn(int(zero.sum()), p.shape[1], generator=torch.Generator().manual_seed(0),
                                     dtype=p.dtype)

    def place(p: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(p, dim=1) if normalize else p

    click_items, click_users = click_items.long(), click_users.long()
    # only the R fitted rows change: the other items' share of each normaliser is computed once
    fixed = fixed_log_partition(vectors, rows, user_vectors, click_users, temperature) if reuse_fixed else None
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t in range(1, steps + 1):
        vectors[rows] = place(p)
        g, _ = softmax_gradient(vectors, rows, user_vectors, click_items, click_users, temperature, fixed=fixed,
                                weights=click_weights)
        if normalize:  # through v = p / |p|: the tangent part, divided by |p|
            norm = p.norm(dim=1, keepdim=True)
            unit = p / norm
            g = (g - (g * unit).sum(1, keepdim=True) * unit) / norm
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return place(p)
