"""fold_in_clicks and fit_new_items: hand-worked cases, slow loop references, behaviour, errors."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_cl.towers.fold_in import fit_new_items, fixed_log_partition, fold_in_clicks, softmax_gradient


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


def _loop_gradient(items: torch.Tensor, rows: list[int], users: torch.Tensor, ci: list[int], cu: list[int],
                   tau: float) -> torch.Tensor:
    grad = torch.zeros(len(rows), items.shape[1], dtype=torch.float64)
    for i, u in zip(ci, cu):
        scores = [float(users[u] @ items[j]) / tau for j in range(items.shape[0])]
        z = sum(math.exp(s) for s in scores)
        for k, r in enumerate(rows):
            p = math.exp(scores[r]) / z
            grad[k] += (p - (1.0 if i == r else 0.0)) * users[u].double() / tau
    return grad / len(ci)


def test_softmax_gradient_matches_a_loop_and_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    items = torch.randn(7, 3, generator=g, dtype=torch.float64)
    users = torch.randn(4, 3, generator=g, dtype=torch.float64)
    rows, ci, cu = [5, 2], [2, 0, 5, 5, 6], [0, 1, 1, 3, 2]
    grad, loss = softmax_gradient(items, torch.tensor(rows), users, torch.tensor(ci), torch.tensor(cu), 0.5,
                                  chunk_size=2)
    torch.testing.assert_close(grad, _loop_gradient(items, rows, users, ci, cu, 0.5))
    leaf = items.clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy(users[torch.tensor(cu)] @ leaf.T / 0.5, torch.tensor(ci))
    ce.backward()
    assert leaf.grad is not None
    torch.testing.assert_close(grad, leaf.grad[rows])
    assert abs(loss - float(ce.detach())) < 1e-9


def test_fixed_log_partition_gives_the_same_gradient_scoring_only_the_fitted_rows() -> None:
    """With the other items' part of the normaliser computed once, the gradient and loss are those of
    the full softmax (loop and autograd above), for clicks on fitted and on fixed items alike."""
    g = torch.Generator().manual_seed(2)
    items = torch.randn(9, 4, generator=g, dtype=torch.float64)
    users = torch.randn(5, 4, generator=g, dtype=torch.float64)
    rows, ci, cu = torch.tensor([7, 1, 4]), torch.tensor([1, 0, 7, 7, 8, 4, 3]), torch.tensor([0, 1, 1, 3, 2, 4, 0])
    fixed = fixed_log_partition(items, rows, users, cu, 0.3, chunk_size=3)
    others = torch.tensor([j for j in range(9) if j not in rows.tolist()])
    torch.testing.assert_close(fixed, torch.logsumexp(users[cu] @ items[others].T / 0.3, dim=1))
    full = softmax_gradient(items, rows, users, ci, cu, 0.3)
    fast = softmax_gradient(items, rows, users, ci, cu, 0.3, chunk_size=2, fixed=fixed)
    torch.testing.assert_close(fast[0], full[0])
    assert abs(fast[1] - full[1]) < 1e-12
    torch.testing.assert_close(fast[0], _loop_gradient(items, rows.tolist(), users, ci.tolist(), cu.tolist(), 0.3))
    # every item fitted: nothing fixed, the normaliser is the fitted rows' alone
    every = torch.arange(9)
    assert bool(torch.isneginf(fixed_log_partition(items, every, users, cu, 0.3)).all())
    full = softmax_gradient(items, every, users, ci, cu, 0.3)
    fast = softmax_gradient(items, every, users, ci, cu, 0.3, fixed=fixed_log_partition(items, every, users, cu, 0.3))
    torch.testing.assert_close(fast[0], full[0])


def test_hand_worked_softmax_gradient() -> None:
    # two items e1, e2 and one user q = e1 who clicked item 1 (e2), temperature 1:
    # p = softmax([1, 0]) = [e/(e+1), 1/(e+1)]; dL/dv_1 = (p_1 - 1) q = -(e/(e+1)) e1
    items, users = torch.eye(2, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    grad, loss = softmax_gradient(items, torch.tensor([1]), users, torch.tensor([1]), torch.tensor([0]), 1.0)
    e = math.e
    torch.testing.assert_close(grad, torch.tensor([[-e / (e + 1), 0.0]], dtype=torch.float64))
    assert abs(loss - math.log(e + 1)) < 1e-12


def test_fitted_new_item_goes_to_its_clickers_and_stays_a_unit_vector() -> None:
    # warm items along the axes; two user groups: group A (near e1) clicks the new item 3 and item 0,
    # group B (near e2) clicks item 1. The new item starts with no content (zero vector).
    items = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    users = torch.tensor([[0.9, 0.1, 0.3], [0.8, -0.1, 0.4], [0.0, 1.0, 0.0], [0.1, 0.9, -0.1]])
    users = torch.nn.functional.normalize(users, dim=1)
    ci, cu = torch.tensor([3, 3, 0, 1, 1]), torch.tensor([0, 1, 0, 2, 3])
    fitted = fit_new_items(items, torch.tensor([3]), users, ci, cu, temperature=0.1, steps=200)
    torch.testing.assert_close(fitted.norm(dim=1), torch.ones(1))
    scores = users @ fitted[0]
    assert scores[:2].min() > scores[2:].max()  # ranks for its clickers, not for the others
    after_items = items.clone()
    after_items[3] = fitted[0]
    _, loss_after = softmax_gradient(after_items, torch.tensor([3]), users, ci, cu, 0.1)
    _, loss_before = softmax_gradient(torch.cat([items[:3], torch.tensor([[1e-3, 0, 0]])]), torch.tensor([3]),
                                      users, ci, cu, 0.1)
    assert loss_after < loss_before
    torch.testing.assert_close(items[3], torch.zeros(3))  # input kept


def test_fitted_vector_does_not_grow_with_clicks_like_the_sum() -> None:
    # 50 clicks by one user: the sum outranks every warm item for an unrelated user, the fit does not
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    users = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    ci = torch.tensor([2] * 50 + [0] * 50)
    cu = torch.tensor([0] * 50 + [1] * 50)
    summed = fold_in_clicks(items, users, ci[:50], cu[:50], 1.0)
    fitted = items.clone()
    fitted[2] = fit_new_items(items, torch.tensor([2]), users, ci, cu, temperature=0.1, steps=200)[0]
    other = users[1]  # clicked item 0 only
    assert int((other @ summed.T).argmax()) == 2
    assert int((other @ fitted.T).argmax()) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(rows=torch.tensor([9])), r"rows must be \(R,\) in \[0, 4\)"),
    (dict(temperature=0.0), r"temperature > 0"),
    (dict(steps=-1), r"steps >= 0"),
])
def test_fit_errors_say_what_was_expected(kwargs: dict, message: str) -> None:
    args = dict(item_vectors=torch.zeros(4, 3), rows=torch.tensor([3]), user_vectors=torch.ones(2, 3),
                click_items=torch.tensor([3]), click_users=torch.tensor([1]), temperature=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        fit_new_items(**args)  # type: ignore[arg-type]


def _loop_weighted_gradient(items: torch.Tensor, rows: list[int], users: torch.Tensor, ci: list[int], cu: list[int],
                            w: list[float], tau: float) -> tuple[torch.Tensor, float]:
    grad = torch.zeros(len(rows), items.shape[1], dtype=torch.float64)
    loss = 0.0
    for i, u, wn in zip(ci, cu, w):
        scores = [float(users[u] @ items[j]) / tau for j in range(items.shape[0])]
        z = sum(math.exp(s) for s in scores)
        loss -= wn * (scores[i] - math.log(z))
        for k, r in enumerate(rows):
            grad[k] += wn * (math.exp(scores[r]) / z - (1.0 if i == r else 0.0)) * users[u].double() / tau
    return grad / sum(w), loss / sum(w)


def test_weighted_softmax_gradient_matches_a_loop_and_counts_a_weight_of_k_as_k_clicks() -> None:
    g = torch.Generator().manual_seed(3)
    items = torch.randn(8, 3, generator=g, dtype=torch.float64)
    users = torch.randn(5, 3, generator=g, dtype=torch.float64)
    rows, ci, cu = torch.tensor([6, 2]), torch.tensor([2, 0, 6, 4, 7, 6]), torch.tensor([0, 1, 1, 3, 2, 4])
    w = torch.tensor([1.0, 3.0, 1.0, 2.5, 0.0, 1.0], dtype=torch.float64)
    want_grad, want_loss = _loop_weighted_gradient(items, rows.tolist(), users, ci.tolist(), cu.tolist(), w.tolist(),
                                                   0.4)
    fixed = fixed_log_partition(items, rows, users, cu, 0.4)
    for kwargs in (dict(chunk_size=4), dict(chunk_size=2, fixed=fixed)):
        grad, loss = softmax_gradient(items, rows, users, ci, cu, 0.4, weights=w, **kwargs)  # type: ignore[arg-type]
        torch.testing.assert_close(grad, want_grad)
        assert abs(loss - want_loss) < 1e-10
    # hand check: weight 3 on a click is that click three times, weight 0 drops it
    reps = torch.tensor([1, 3, 1, 0, 0, 1])
    dup_i, dup_u = ci.repeat_interleave(reps), cu.repeat_interleave(reps)
    half = torch.tensor([1.0, 3.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(softmax_gradient(items, rows, users, ci, cu, 0.4, weights=half)[0],
                               softmax_gradient(items, rows, users, dup_i, dup_u, 0.4)[0])
    # all-ones weights are the plain mean
    torch.testing.assert_close(softmax_gradient(items, rows, users, ci, cu, 0.4, weights=torch.ones(6).double())[0],
                               softmax_gradient(items, rows, users, ci, cu, 0.4)[0])


def test_fit_with_integer_weights_equals_fitting_to_repeated_clicks() -> None:
    g = torch.Generator().manual_seed(4)
    items = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=1)
    users = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    ci, cu = torch.tensor([5, 0, 1, 5, 2]), torch.tensor([0, 1, 2, 3, 4])
    reps = torch.tensor([1, 2, 4, 1, 3])
    weighted = fit_new_items(items, torch.tensor([5]), users, ci, cu, 0.1, steps=50, click_weights=reps.float())
    repeated = fit_new_items(items, torch.tensor([5]), users, ci.repeat_interleave(reps), cu.repeat_interleave(reps),
                             0.1, steps=50)
    torch.testing.assert_close(weighted, repeated, atol=1e-5, rtol=1e-5)
    plain = fit_new_items(items, torch.tensor([5]), users, ci, cu, 0.1, steps=50)
    assert (weighted - plain).abs().max() > 1e-3  # the weights do change the fit


@pytest.mark.parametrize("weights", [torch.ones(2), torch.tensor([-1.0]), torch.tensor([float("nan")])])
def test_fit_refuses_bad_click_weights(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"click_weights must be \(N,\) = \(1,\), finite and >= 0"):
        fit_new_items(torch.zeros(4, 3), torch.tensor([3]), torch.ones(2, 3), torch.tensor([3]), torch.tensor([1]),
                      0.1, click_weights=weights)


def test_fit_without_normalize_lowers_the_loss_with_free_length_vectors() -> None:
    """model.normalize=false: the fitted vector is not put on the sphere; it still ranks for its
    clickers and lowers the clicks' loss, and gradient descent on the plain vector is what moves it."""
    items = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    users = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1, 0.3], [0.8, -0.1, 0.4], [0.0, 1.0, 0.0]]), dim=1)
    ci, cu = torch.tensor([3, 3, 1]), torch.tensor([0, 1, 2])
    fitted = fit_new_items(items, torch.tensor([3]), users, ci, cu, temperature=0.5, normalize=False, steps=200)
    assert abs(float(fitted.norm()) - 1.0) > 0.05  # not projected to unit length
    scores = users @ fitted[0]
    assert scores[:2].min() > scores[2]
    after = items.clone()
    after[3] = fitted[0]
    start = torch.cat([items[:3], torch.tensor([[1e-3, 0, 0]])])
    assert softmax_gradient(after, torch.tensor([3]), users, ci, cu, 0.5)[1] < \
        softmax_gradient(start, torch.tensor([3]), users, ci, cu, 0.5)[1]


def test_fit_is_exact_per_distinct_clicker_in_float64() -> None:
    """Users with several clicks: the per-clicker softmax and the fixed normaliser give the fit that
    rescores all M items at every step (reuse_fixed=False), to float64 precision; zero (no-content)
    rows start in the vectors' own dtype."""
    g = torch.Generator().manual_seed(5)
    items = torch.nn.functional.normalize(torch.randn(40, 6, generator=g, dtype=torch.float64), dim=1)
    users = torch.nn.functional.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1)
    rows = torch.tensor([37, 38, 39])
    items[rows] = 0.0
    ci = torch.randint(0, 40, (60,), generator=g)
    cu = torch.randint(0, 7, (60,), generator=g)  # about 9 clicks per user
    w = torch.rand(60, generator=g, dtype=torch.float64)
    fast = fit_new_items(items, rows, users, ci, cu, 0.2, steps=30, click_weights=w)
    slow = fit_new_items(items, rows, users, ci, cu, 0.2, steps=30, click_weights=w, reuse_fixed=False)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)
