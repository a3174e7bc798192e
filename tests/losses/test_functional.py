"""Losses against slow loop references, hand-worked cases and properties (sign of logQ, masking)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys_cl.losses import (
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

BATCH_SIZES = [1, 3, 8]
DIMS = [2, 16]
TEMPERATURES = [0.05, 0.5, 1.0]


# ----------------------------------------------------------------------------- loop references
def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def softmax_reference(
    user: torch.Tensor,
    items: torch.Tensor,
    temperature: float,
    log_q: list[float] | None = None,
    cand_ids: list[int] | None = None,
    logq_weight: float = 1.0,
) -> float:
    """s / tau - w log q, drop accidental hits (same id as the row's positive, j != i), CE on i."""
    U, V = user.double().tolist(), items.double().tolist()
    B, C = len(U), len(V)
    total = 0.0
    for i in range(B):
        logit = []
        for j in range(C):
            if cand_ids is not None and j != i and cand_ids[j] == cand_ids[i]:
                continue  # accidental hit: not in the denominator
            lj = _dot(U[i], V[j]) / temperature - (logq_weight * log_q[j] if log_q is not None else 0.0)
            logit.append((j, lj))
        denom = sum(math.exp(l) for _, l in logit)
        pos = math.exp(dict(logit)[i])
        total += -math.log(pos / denom)
    return total / B


def debiased_reference(
    logits: list[list[float]], tau_plus: float, temperature: float, valid: list[list[bool]]
) -> float:
    """Chuang et al. 2020 as in chingyaoc/DCL main.py, one row at a time, no shifting."""
    total = 0.0
    for i, row in enumerate(logits):
        pos = math.exp(row[i])
        negs = [math.exp(l) for j, l in enumerate(row) if j != i and valid[i][j]]
        n = len(negs)
        ng = (-tau_plus * n * pos + sum(negs)) / (1 - tau_plus)
        ng = max(ng, n * math.exp(-1 / temperature))
        total += -math.log(pos / (pos + ng))
    return total / len(logits)


def triplet_reference(scores: list[list[float]], margin: float, valid: list[list[bool]]) -> float:
    terms = [
        max(0.0, margin - row[i] + row[j])
        for i, row in enumerate(scores)
        for j in range(len(row))
        if j != i and valid[i][j]
    ]
    return sum(terms) / len(terms) if terms else 0.0


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    z = z1.double().tolist() + z2.double().tolist()
    n, B = len(z), len(z1)
    total = 0.0
    for a in range(n):
        p = (a + B) % n
        denom = sum(math.exp(_dot(z[a], z[k]) / temperature) for k in range(n) if k != a)
        total += -math.log(math.exp(_dot(z[a], z[p]) / temperature) / denom)
    return total / n


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ----------------------------------------------------------------------------- sampled softmax
@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("N", [0, 5])
@pytest.mark.parametrize("logq_weight", [0.0, 0.5, 1.0])
def test_softmax_pipeline_matches_loop(B: int, D: int, temperature: float, N: int, logq_weight: float) -> None:
    C = B + N
    user, items = _unit(B, D, seed=B * 100 + D), _unit(C, D, seed=B * 100 + D + 1)
    g = torch.Generator().manual_seed(7)
    cand_ids = torch.randint(0, max(2, C // 2), (C,), generator=g)  # forces duplicates
    log_q = torch.rand(C, generator=g, dtype=torch.float64) * 6 - 8

    logits = retrieval_logits(user, items, temperature)  # s / tau
    logits = logq_correction(logits, log_q, logq_weight)  # - w log q
    logits = mask_accidental_hits(logits, cand_ids[:B], cand_ids)
    loss = sampled_softmax_loss(logits)

    expected = softmax_reference(user, items, temperature, log_q.tolist(), cand_ids.tolist(), logq_weight)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_softmax_hand_worked() -> None:
    user = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    items = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    # scores: [[6, 3], [8, 4]]; row 0's positive is 6, row 1's is 4.
    logits = retrieval_logits(user, items, temperature=1.0)
    assert logits.tolist() == [[6.0, 3.0], [8.0, 4.0]]
    # row 0: -log(e^6 / (e^6 + e^3)) = log(1 + e^-3); row 1: -log(e^4 / (e^8 + e^4)) = log(1 + e^4)
    expected = (math.log1p(math.exp(-3)) + math.log1p(math.exp(4))) / 2
    assert sampled_softmax_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    # temperature 2 halves every score: [[3, 1.5], [4, 2]]
    assert retrieval_logits(user, items, temperature=2.0).tolist() == [[3.0, 1.5], [4.0, 2.0]]


# ----------------------------------------------------------------------------- logQ
def test_logq_sign_popular_negative_share_falls_rare_rises() -> None:
    """The logQ correction (Yi et al. 2019): with equal raw scores, s - log p lowers a popular negative's
    share of the softmax denominator and raises a rare one's (TFRS #219 added log p instead)."""
    logits = torch.zeros(1, 3)  # equal raw scores: positive, popular negative, rare negative
    p = torch.tensor([0.01, 0.5, 0.0001])  # sampling probability of each column
    before = logits.softmax(dim=1)[0]
    after = logq_correction(logits, p.log()).softmax(dim=1)[0]
    assert before.tolist() == pytest.approx([1 / 3] * 3)
    assert after[1] < before[1]  # popular negative: share falls
    assert after[2] > before[2]  # rare negative: share rises
    # every corrected logit goes up (log p < 0), the rare one's the most
    corrected = logq_correction(logits, p.log())[0]
    assert (corrected > 0).all() and corrected[2] > corrected[0] > corrected[1]


@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_logq_uniform_equals_uncorrected(B: int, temperature: float) -> None:
    C = B + 4
    logits = retrieval_logits(_unit(B, 8, seed=1), _unit(C, 8, seed=2), temperature)
    uniform = torch.full((C,), math.log(C / 1000.0), dtype=logits.dtype)
    corrected = sampled_softmax_loss(logq_correction(logits, uniform))
    assert corrected.item() == pytest.approx(sampled_softmax_loss(logits).item(), rel=1e-12)


def test_logq_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one entry per candidate"):
        logq_correction(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        logq_correction(torch.zeros(2, 3), torch.tensor([0.0, -math.inf, 0.0]))
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"weight must be a finite number >= 0 .*got"):
            logq_correction(torch.zeros(2, 3), torch.zeros(3), bad)


def test_logq_weight_hand_worked() -> None:
    """Partial correction s / tau - w log q with w = 0.5 on a 2 x 3 matrix."""
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, -1.0]], dtype=torch.float64)
    log_q = torch.tensor([-1.0, -4.0, 2.0], dtype=torch.float64)
    # 0.5 * log q = [-0.5, -2, 1]: columns 0 and 1 go up by 0.5 and 2, column 2 down by 1
    got = logq_correction(logits, log_q, 0.5)
    assert got.tolist() == [[2.5, 3.0, -1.0], [1.0, 5.0, -2.0]]
    # row 0: -log(e^2.5 / (e^2.5 + e^3 + e^-1)); row 1: -log(e^5 / (e^1 + e^5 + e^-2))
    row0 = -math.log(math.exp(2.5) / (math.exp(2.5) + math.exp(3.0) + math.exp(-1.0)))
    row1 = -math.log(math.exp(5.0) / (math.exp(1.0) + math.exp(5.0) + math.exp(-2.0)))
    assert sampled_softmax_loss(got).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


def test_logq_weight_one_is_the_full_correction_and_zero_is_none() -> None:
    logits = retrieval_logits(_unit(3, 8, seed=1), _unit(5, 8, seed=2), 0.1).float()  # (3, 5)
    log_q = torch.tensor([-2.0, -0.5, -7.0, 0.3, -1.1])
    assert torch.equal(logq_correction(logits, log_q, 1.0), logits - log_q[None, :])
    assert torch.equal(logq_correction(logits, log_q, 1.0), logq_correction(logits, log_q))  # the default
    assert torch.equal(logq_correction(logits, log_q, 0.0), logits)


# ----------------------------------------------------------------------------- masking
def test_mask_accidental_hits_no_duplicates_changes_nothing() -> None:
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(7) * 3
    assert torch.equal(mask_accidental_hits(logits, ids[:4], ids), logits)


def test_mask_accidental_hits_duplicate_gets_zero_probability() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]])
    ids = torch.tensor([10, 20, 10, 30])  # column 2 duplicates row 0's positive (item 10)
    masked = mask_accidental_hits(logits, ids[:2], ids)
    assert masked[0, 2].item() == MASK_VALUE
    assert masked[0, 0].item() == 1.0  # the positive itself is kept
    assert torch.equal(masked[1], logits[1])  # row 1 (item 20) has no duplicate
    probs = masked.softmax(dim=1)
    assert probs[0, 2].item() == 0.0  # exactly zero
    # the loss equals the loss with the duplicate column removed from row 0's denominator
    row0 = F.cross_entropy(logits[:1, [0, 1, 3]], torch.tensor([0]))
    row1 = F.cross_entropy(logits[1:], torch.tensor([1]))
    expected = (row0 + row1) / 2
    assert sampled_softmax_loss(masked).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mask_accidental_hits_in_sampled_columns() -> None:
    logits = torch.zeros(2, 5)
    ids = torch.tensor([1, 2, 2, 9, 1])  # sampled columns 2..4; col 2 = item 2, col 4 = item 1
    masked = mask_accidental_hits(logits, ids[:2], ids)
    assert (masked == MASK_VALUE).tolist() == [
        [False, False, False, False, True],
        [False, False, True, False, False],
    ]


def test_mask_by_never_masks_positive() -> None:
    logits = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)  # e.g. "all of the user's clicks", positive too
    masked = mask_by(logits, mask)
    assert (masked != MASK_VALUE).tolist() == [[True, False, False], [False, True, False]]
    assert sampled_softmax_loss(masked).item() == 0.0
    with pytest.raises(ValueError, match="shape of logits"):
        mask_by(logits, torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("temperature", [0.05, 0.01])
def test_gradients_finite_with_masks_and_large_logq(temperature: float) -> None:
    B, N, D = 6, 4, 8
    user = _unit(B, D, seed=3).float().requires_grad_()
    items = _unit(B + N, D, seed=4).float().requires_grad_()
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 1, 7, 0, 9])  # duplicates in-batch and sampled
    log_q = torch.full((B + N,), -15.0)  # rare items: +15 on every logit
    log_q[::3] = 0.0
    clicked = torch.zeros(B, B + N, dtype=torch.bool)
    clicked[:, 7] = True
    for loss_fn in (
        sampled_softmax_loss,
        lambda l: debiased_contrastive_loss(l, tau_plus=0.1, temperature=temperature),
    ):
        user.grad = items.grad = None
        logits = logq_correction(retrieval_logits(user, items, temperature), log_q)
        logits = mask_by(mask_accidental_hits(logits, ids[:B], ids), clicked)
        loss = loss_fn(logits)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(user.grad).all() and torch.isfinite(items.grad).all()


# ----------------------------------------------------------------------------- debiased
def _valid_from(logits: torch.Tensor) -> list[list[bool]]:
    return (logits > MASK_VALUE / 2).tolist()


@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.5])
def test_debiased_matches_loop(B: int, D: int, temperature: float, tau_plus: float) -> None:
    C = B + 3
    logits = retrieval_logits(_unit(B, D, seed=B + D), _unit(C, D, seed=B + D + 50), temperature)
    ids = torch.tensor([i % max(1, B - 1) for i in range(C)])  # some accidental hits
    logits = mask_accidental_hits(logits, ids[:B], ids)
    loss = debiased_contrastive_loss(logits, tau_plus=tau_plus, temperature=temperature)
    expected = debiased_reference(logits.tolist(), tau_plus, temperature, _valid_from(logits))
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_debiased_explicit_valid_matches_loop() -> None:
    logits = retrieval_logits(_unit(4, 8, seed=0), _unit(6, 8, seed=1), 0.2)
    valid = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) > 0.4
    loss = debiased_contrastive_loss(logits, tau_plus=0.2, temperature=0.2, valid=valid)
    expected = debiased_reference(logits.tolist(), 0.2, 0.2, valid.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_debiased_hand_worked() -> None:
    # one row: positive logit 0 (exp 1), negatives log 2 and log 3 (exp 2 and 3), N = 2
    # tau_plus = 0.5: Ng = (-0.5 * 2 * 1 + (2 + 3)) / 0.5 = 8; floor 2 * e^-1 ~ 0.74 inactive
    # loss = -log(1 / (1 + 8)) = log 9
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]], dtype=torch.float64)
    loss = debiased_contrastive_loss(logits, tau_plus=0.5, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(9.0), rel=1e-12)


@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_debiased_tau_plus_zero_is_softmax(B: int, temperature: float) -> None:
    """Cosine logits are >= -1/t, so the clamp is inactive and Ng = sum of negatives."""
    logits = retrieval_logits(_unit(B, 8, seed=B), _unit(B + 5, 8, seed=B + 9), temperature)
    debiased = debiased_contrastive_loss(logits, tau_plus=0.0, temperature=temperature)
    assert debiased.item() == pytest.approx(sampled_softmax_loss(logits).item(), rel=1e-9)


def test_debiased_clamp_activates() -> None:
    # positive logit 2 (exp e^2), negatives 0 and 0 (exp 1 each), N = 2, t = 1, tau_plus = 0.5:
    # raw Ng = (-0.5 * 2 * e^2 + 2) / 0.5 = 4 - 2e^2 < 0 -> clamped to N e^-1 = 2/e
    logits = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    loss = debiased_contrastive_loss(logits, tau_plus=0.5, temperature=1.0)
    floor = 2 * math.exp(-1)
    assert loss.item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + floor)), rel=1e-12)


def test_debiased_no_overflow_low_temperature_large_logq() -> None:
    """t = 0.01 and a +15 logQ offset give logits of ~115: exp overflows float32 unshifted."""
    logits64 = torch.tensor(
        [[100.0, 115.0, 99.0, MASK_VALUE], [80.0, 60.0, 112.0, 114.0]], dtype=torch.float64
    )
    logits = logits64.float().requires_grad_()
    loss = debiased_contrastive_loss(logits, tau_plus=0.1, temperature=0.01)
    loss.backward()
    expected = debiased_reference(logits64.tolist(), 0.1, 0.01, _valid_from(logits64))
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits.grad[0, 3].item() == 0.0  # masked entry gets no gradient


def test_debiased_row_without_negatives_is_zero() -> None:
    logits = torch.tensor([[1.0, MASK_VALUE]], requires_grad=True)
    loss = debiased_contrastive_loss(logits, tau_plus=0.1, temperature=0.5)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_debiased_masked_logit_is_not_a_negative_even_if_valid_says_so() -> None:
    # positive 0 (exp 1), negatives log 2 and log 3 as in the hand-worked case, plus a masked
    # column that an all-True ``valid`` still marks: "masked columns (logit MASK_VALUE or
    # valid == False) are excluded", so N stays 2 and the loss stays log 9. Counting the masked
    # column would give N = 3: Ng = (-0.5 * 3 + 5) / 0.5 = 7, loss log 8.
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), MASK_VALUE]], dtype=torch.float64)
    valid = torch.ones(1, 4, dtype=torch.bool)
    loss = debiased_contrastive_loss(logits, tau_plus=0.5, temperature=1.0, valid=valid)
    assert loss.item() == pytest.approx(math.log(9.0), rel=1e-12)


def test_debiased_rejects_bad_tau_plus() -> None:
    with pytest.raises(ValueError, match="tau_plus"):
        debiased_contrastive_loss(torch.zeros(2, 2), tau_plus=1.0, temperature=0.1)


# ----------------------------------------------------------------------------- triplet
def test_triplet_hand_worked() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.8], [0.1, 0.3, 0.4]])
    # margin 0.2; row 0 (pos 0.9): relu(0.2 - 0.9 + 0.5) = 0, relu(0.2 - 0.9 + 0.8) = 0.1
    #             row 1 (pos 0.3): relu(0.2 - 0.3 + 0.1) = 0, relu(0.2 - 0.3 + 0.4) = 0.3
    # mean over the 4 (row, negative) pairs: 0.4 / 4 = 0.1
    assert triplet_loss(scores, margin=0.2).item() == pytest.approx(0.1, abs=1e-6)
    valid = torch.tensor([[True, True, False], [True, True, True]])  # drop (0, 2): 0.3 / 3
    assert triplet_loss(scores, margin=0.2, valid=valid).item() == pytest.approx(0.1, abs=1e-6)


def test_triplet_skips_masked_scores_with_or_without_valid() -> None:
    # the hand-worked scores with (0, 2) masked, e.g. an accidental hit: the valid pairs are
    # (0, 1) -> 0, (1, 0) -> 0, (1, 2) -> 0.3, so the mean is 0.3 / 3 = 0.1. Counting the masked
    # pair (its hinge relu(0.2 - 0.9 + MASK_VALUE) is 0) would dilute it to 0.3 / 4 = 0.075.
    scores = torch.tensor([[0.9, 0.5, MASK_VALUE], [0.1, 0.3, 0.4]])
    assert triplet_loss(scores, margin=0.2).item() == pytest.approx(0.1, abs=1e-6)
    every = torch.ones(2, 3, dtype=torch.bool)  # a valid mask that does not know about the mask
    assert triplet_loss(scores, margin=0.2, valid=every).item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize("B", BATCH_SIZES)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_triplet_matches_loop(B: int, D: int, margin: float) -> None:
    scores = _unit(B, D, seed=B) @ _unit(B + 2, D, seed=D).T
    valid = torch.rand(B, B + 2, generator=torch.Generator().manual_seed(B)) > 0.3
    loss = triplet_loss(scores, margin=margin, valid=valid)
    expected = triplet_reference(scores.tolist(), margin, valid.tolist())
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_triplet_no_valid_pairs_is_zero_with_gradient() -> None:
    scores = torch.zeros(1, 1, requires_grad=True)
    loss = triplet_loss(scores, margin=0.5)
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None


# ----------------------------------------------------------------------------- NT-Xent
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_nt_xent_matches_loop_and_is_symmetric(B: int, D: int, temperature: float) -> None:
    z1, z2 = _unit(B, D, seed=B), _unit(B, D, seed=B + 1)
    loss = nt_xent_loss(z1, z2, temperature)
    assert loss.item() == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-9)
    assert nt_xent_loss(z2, z1, temperature).item() == pytest.approx(loss.item(), rel=1e-12)


def test_nt_xent_hand_worked() -> None:
    # B = 1: the only candidate of each view is the other view -> probability 1, loss 0
    z = torch.tensor([[1.0, 0.0]])
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(0.0, abs=1e-7)
    # B = 2, z1 = [e1, e2], z2 = [e1, e2], t = 1: view e1's candidates are e2 (0), e1' (1), e2' (0)
    # loss per view = -log(e / (e + 2)) = log(1 + 2/e), the same for all 4 views
    z1 = torch.eye(2)
    assert nt_xent_loss(z1, z1.clone(), 1.0).item() == pytest.approx(math.log1p(2 / math.e), rel=1e-6)


def test_nt_xent_backprop() -> None:
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    loss = nt_xent_loss(F.normalize(z1, dim=1), F.normalize(z2, dim=1), 0.05)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
