"""fold_in_clicks: a hand-worked case, a slow loop reference, and its errors."""

from __future__ import annotations

import pytest
import torch

from recsys_cl.towers.fold_in import fold_in_clicks


def _loop_reference(items: torch.Tensor, users: torch.Tensor, ci: torch.Tensor, cu: torch.Tensor,
                    step: float) -> torch.Tensor:
    out = items.clone()
    for i, u in zip(ci.tolist(), cu.tolist()):
        out[i] = out[i] + step * users[u]
    return out


def test_hand_worked_case() -> None:
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    users = torch.tensor([[0.5, 0.5], [-1.0, 2.0]])
    # item 0 clicked by user 1; item 2 (no content, e.g. ID only) by users 0, 1 and user 0 again
    ci, cu = torch.tensor([0, 2, 2, 2]), torch.tensor([1, 0, 1, 0])
    out = fold_in_clicks(items, users, ci, cu, step=0.5)
    expected = torch.tensor([
        [1.0 + 0.5 * -1.0, 0.0 + 0.5 * 2.0],  # [0.5, 1.0]
        [0.0, 1.0],  # not clicked: unchanged
        [0.5 * (0.5 - 1.0 + 0.5), 0.5 * (0.5 + 2.0 + 0.5)],  # [0.0, 1.5]
    ])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(items, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))  # input kept
    # more clicks, longer vector: for user 1 the item clicked three times (scores 3.0) now beats
    # the item it clicked once (1.5) and the unclicked one (2.0)
    torch.testing.assert_close(users[1] @ out.T, torch.tensor([1.5, 2.0, 3.0]))


def test_matches_the_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    items, users = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    ci, cu = torch.randint(0, 50, (400,), generator=g), torch.randint(0, 30, (400,), generator=g)
    for step in (0.0, 0.3, 1.0):
        expected = _loop_reference(items, users, ci, cu, step)
        torch.testing.assert_close(fold_in_clicks(items, users, ci, cu, step), expected)


def test_no_clicks_or_step_zero_leave_the_vectors() -> None:
    items, users = torch.randn(4, 3), torch.randn(2, 3)
    empty = torch.zeros(0, dtype=torch.long)
    torch.testing.assert_close(fold_in_clicks(items, users, empty, empty), items)
    torch.testing.assert_close(fold_in_clicks(items, users, torch.tensor([1]), torch.tensor([0]), 0.0), items)


@pytest.mark.parametrize("bad, message", [
    (dict(users=torch.zeros(2, 5)), r"same D; got \(4, 3\) and \(2, 5\)"),
    (dict(cu=torch.tensor([0])), r"one item row and one user row per click"),
    (dict(ci=torch.tensor([0, 4])), r"item rows must be in \[0, 4\); got 0..4"),
    (dict(cu=torch.tensor([-1, 0])), r"user rows must be in \[0, 2\); got -1..0"),
    (dict(step=-1.0), r"step must be >= 0"),
    (dict(step=float("nan")), r"step must be >= 0"),
])
def test_errors_say_what_was_expected(bad: dict, message: str) -> None:
    args = dict(items=torch.zeros(4, 3), users=torch.zeros(2, 3), ci=torch.tensor([0, 1]), cu=torch.tensor([1, 0]),
                step=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        fold_in_clicks(args["items"], args["users"], args["ci"], args["cu"], args["step"])
