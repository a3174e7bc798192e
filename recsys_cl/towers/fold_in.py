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
