"""Queue, momentum encoder, top-k hard negatives and MoCHi as small units; queued columns in the recipe."""

import math

import pytest
import torch
from torch import nn

from recsys_cl.config import (
    ConfigError,
    HardNegativesConfig,
    LossConfig,
    RunConfig,
    load_config,
)
from recsys_cl.losses import (
    MASK_VALUE,
    NegativeQueue,
    append_mochi_negatives,
    hard_negative_topk,
    mochi_negatives,
    momentum_copy,
    momentum_update,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


# --- queue


def test_queue_wraps_around_oldest_first_and_returns_only_filled_slots() -> None:
    q = NegativeQueue(size=5, dim=2)
    assert len(q) == 0 and q.negatives()[0].shape == (0, 2)
    emb = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    q.enqueue(emb[:3], torch.arange(3), torch.full((3,), -1.0))
    e, ids, lq = q.negatives()
    assert ids.tolist() == [0, 1, 2] and e.shape == (3, 2) and lq.tolist() == [-1.0] * 3
    q.enqueue(emb[3:7], torch.arange(3, 7))  # 7 entries into 5 slots: 0 and 1 are overwritten
    e, ids, lq = q.negatives()
    assert ids.tolist() == [2, 3, 4, 5, 6]
    assert torch.equal(e, emb[2:7]) and lq.tolist() == [-1.0, 0, 0, 0, 0]
    assert int(q.pointer) == 2 and len(q) == 5


def test_queue_keeps_the_last_size_entries_of_a_big_batch_and_no_gradient() -> None:
    q = NegativeQueue(size=3, dim=2)
    emb = torch.randn(8, 2, requires_grad=True)
    q.enqueue(emb, torch.arange(8))
    e, ids, _ = q.negatives()
    assert ids.tolist() == [5, 6, 7] and not e.requires_grad
    assert torch.equal(e, emb.detach()[5:])


def test_queue_state_dict_round_trip() -> None:
    q = NegativeQueue(size=4, dim=2)
    q.enqueue(torch.randn(6, 2), torch.arange(6), torch.randn(6))
    r = NegativeQueue(size=4, dim=2)
    r.load_state_dict(q.state_dict())
    for a, b in zip(q.negatives(), r.negatives()):
        assert torch.equal(a, b)


# --- momentum


def test_momentum_update_is_the_ema_of_the_online_parameters() -> None:
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    k0 = target.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    q = online.weight.detach().clone()
    momentum_update(online, target, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * k0 + 0.1 * q)
    for _ in range(9):
        momentum_update(online, target, 0.9)
    torch.testing.assert_close(target.weight, q + 0.9**10 * (k0 - q))  # k_n = q + m^n (k_0 - q)
    momentum_update(online, target, 0.0)
    torch.testing.assert_close(target.weight, q)
    before = target.bias.clone()
    momentum_update(nn.Linear(3, 2), target, 1.0)
    assert torch.equal(target.bias, before)
    with pytest.raises(ValueError, match="same parameters"):
        momentum_update(nn.Linear(3, 2, bias=False), target, 0.5)


# --- hard negatives


def test_topk_keeps_the_positive_and_exactly_k_hardest_valid_negatives() -> None:
    logits = torch.tensor([[-5.0, 3.0, 1.0, 2.0, MASK_VALUE],
                           [4.0, -9.0, MASK_VALUE, 0.0, 1.0]])
    out = hard_negative_topk(logits, k=2)
    kept = out > MASK_VALUE / 2
    assert kept.tolist() == [[True, True, False, True, False], [True, True, False, False, True]]
    assert out[0, 0] == -5.0 and out[1, 1] == -9.0  # positives kept though they score lowest
    assert torch.equal(hard_negative_topk(logits, k=10), logits)


def test_mochi_outputs_are_unit_norm_detached_and_closer_to_the_query() -> None:
    B, H, D = 6, 8, 16
    query = _unit(B, D, seed=1).requires_grad_(True)
    # hardest negatives with positive similarity to the query
    hardest = nn.functional.normalize(query.detach()[:, None, :] + 0.8 * _unit(B, H, D, seed=2), dim=-1)
    g = torch.Generator().manual_seed(0)
    syn, w = mochi_negatives(query, hardest.requires_grad_(True), n_mix=5, n_query_mix=4,
                             beta_max=0.5, generator=g)
    assert syn.shape == (B, 9, D) and w.shape == (B, 9, H)
    assert not syn.requires_grad and not w.requires_grad
    torch.testing.assert_close(syn.norm(dim=-1), torch.ones(B, 9))
    sim_syn = torch.einsum("bd,bsd->bs", query.detach(), syn)  # (B, S')
    sim_neg = torch.einsum("bd,bhd->bh", query.detach(), hardest.detach())  # (B, H)
    used = w > 0
    # query mixes: weight of the negative part 1 - b > 0.5, and closer than the negative they mix
    assert (w[:, 5:].sum(-1) > 0.5).all() and (w[:, 5:].sum(-1) <= 1).all()
    nearest_part = torch.where(used, sim_neg[:, None, :], torch.inf).amin(-1)  # (B, S')
    assert (sim_syn[:, 5:] >= nearest_part[:, 5:] - 1e-6).all()
    # hard mixes: weights sum to one; at least as close as the farther of the two mixed
    torch.testing.assert_close(w[:, :5].sum(-1), torch.ones(B, 5))
    assert (sim_syn[:, :5] >= nearest_part[:, :5] - 1e-6).all()


def test_mochi_columns_get_gradient_only_through_the_query_and_skip_masked_constituents() -> None:
    B, C, D = 3, 5, 4
    user = _unit(B, D, seed=3).requires_grad_(True)
    items = _unit(C, D, seed=4).requires_grad_(True)
    logits = user @ items.T / 0.5
    logits = logits.masked_fill(torch.tensor([[False, False, True, True, True]] * 3), MASK_VALUE)
    out = append_mochi_negatives(logits, user, items, torch.zeros(C), 0.5, n_hard=3, n_mix=4,
                                 n_query_mix=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (B, C + 6)
    # rows 1, 2 have one valid negative: mixes touching masked columns are masked; row 0 too
    syn = out[:, C:]
    assert ((syn > MASK_VALUE / 2).sum() < syn.numel())
    out[:, C:].masked_fill(syn <= MASK_VALUE / 2, 0).sum().backward()
    assert user.grad is not None and user.grad.abs().sum() > 0
    assert items.grad is None or items.grad.abs().sum() == 0


# --- queued columns in the recipe


def _model_and_batch():
    import polars as pl

    from recsys_cl.config import ItemTowerConfig, ModelConfig, UserTowerConfig
    from recsys_cl.features.spec import build_feature_spec
    from recsys_cl.towers.two_tower import build_two_tower
    from recsys_cl.train.steps import Batch

    c = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [0, 1, 2, 3, 4, 5],
                      "timestamp": list(range(6)), "row_order": list(range(6))})
    spec = build_feature_spec(c, None)
    torch.manual_seed(0)
    model = build_two_tower(spec, ModelConfig(embedding_dim=4), UserTowerConfig(history_length=2),
                            ItemTowerConfig(encoders=("id",)))
    b = Batch(history=torch.tensor([[1, -1], [0, 2], [3, 0]]), user_index=torch.tensor([0, 1, 2]),
              candidates=torch.tensor([2, 4, 5]), log_q=torch.tensor([0.5, -1.0, 0.5]))
    return model, b


def test_queued_duplicate_of_a_positive_is_masked_and_log_q_applies() -> None:
    from recsys_cl.train.steps import QueuedNegatives, batch_loss

    model, b = _model_and_batch()
    cfg = LossConfig(temperature=0.5)
    q_items = model.item_tower(torch.tensor([2, 1])).detach()  # id 2 duplicates row 0's positive
    queued = QueuedNegatives(q_items, torch.tensor([2, 1]), torch.tensor([0.3, -0.7]),
                             out_of_scope=torch.tensor([[False, False], [False, True], [False, False]]))
    got = batch_loss(model, b, cfg, queued)
    u, v = model(b.history, b.user_index, b.candidates)
    v = torch.cat([v, q_items]).detach()
    ids = [2, 4, 5, 2, 1]
    log_q = [0.5, -1.0, 0.5, 0.3, -0.7]
    s = (u.detach() @ v.T) / 0.5
    rows = []
    for i in range(3):
        neg = [j for j in range(5) if j != i and ids[j] != ids[i] and not (i == 1 and j == 4)]
        pos = math.exp(s[i, i] - log_q[i])
        rows.append(-math.log(pos / (pos + sum(math.exp(s[i, j] - log_q[j]) for j in neg))))
    assert got.item() == pytest.approx(sum(rows) / 3, rel=1e-5)
    # without accidental-hit masking the queued duplicate counts as row 0's negative
    unmasked = LossConfig(temperature=0.5, mask_accidental_hits=False)
    assert batch_loss(model, b, unmasked, queued).item() > got.item() + 1e-4


def test_hard_negatives_in_the_recipe_run_and_have_finite_gradients() -> None:
    from recsys_cl.train.steps import batch_loss

    model, b = _model_and_batch()
    for kind in ("topk", "mochi"):
        hard = load_config(None, RunConfig, [f"negatives.hard.kind={kind}", "negatives.hard.topk.k=1",
                                             "negatives.hard.mochi.n_hard=2"]).negatives.hard
        loss = batch_loss(model, b, LossConfig(temperature=0.5), hard=hard,
                          generator=torch.Generator().manual_seed(0))
        model.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                            if p.grad is not None)
    assert isinstance(hard, HardNegativesConfig)


# --- config


@pytest.mark.parametrize("override, message", [
    ("negatives.queue.size=70000", r"negatives\.queue\.size must be in \[1, 65536\]"),
    ("negatives.queue.momentum=1.0", r"negatives\.queue\.momentum"),
    ("negatives.queue.kind=memory", r"negatives\.queue\.kind must be one of"),
    ("negatives.hard.kind=mixup", r"negatives\.hard\.kind must be one of"),
    ("negatives.hard.topk.k=0", r"negatives\.hard\.topk\.k"),
    ("negatives.hard.mochi.beta_max=0.6", r"negatives\.hard\.mochi\.beta_max"),
    ("negatives.hard.mochi.nhard=3", r"unknown config key 'negatives\.hard\.mochi\.nhard'"),
])
def test_negatives_config_errors_name_the_full_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, RunConfig, [override])


def test_hard_negatives_with_triplet_loss_is_rejected() -> None:
    with pytest.raises(ConfigError, match="negatives.hard.kind=topk"):
        load_config(None, RunConfig, ["loss.kind=triplet", "negatives.hard.kind=topk"])
