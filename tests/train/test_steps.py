"""batch_loss follows the recipe; batches carry the right logQ per source and the right masks."""

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys_cl.config import ItemTowerConfig, LossConfig, ModelConfig, RunConfig, UserTowerConfig, load_config
from recsys_cl.data.item_stats import StreamingFrequencyEstimator, item_log_prob_counting
from recsys_cl.data.negatives import UniformSampler, make_user_item_keys
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.steps import Batch, QueuedNegatives, batch_loss
from recsys_cl.towers.two_tower import build_two_tower


def _clicks() -> pl.DataFrame:
    # 3 users; item 0 is popular (clicked by everyone), others rare.
    return pl.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 2, 3, 3, 3],
        "item_id": [0, 1, 2, 0, 3, 4, 0, 5, 1],
        "timestamp": list(range(9)),
        "row_order": list(range(9)),
    })


def _data(**kw) -> tuple[TrainingData, object]:
    c = _clicks()
    spec = build_feature_spec(c, None)
    seq = Sequences.from_clicks(c, spec.items, spec.users)
    data = TrainingData(sequences=seq, positions=seq.training_positions(), history_length=2,
                        num_items=spec.num_items, **kw)
    return data, spec


def test_counting_logq_is_log_expected_count_in_batch() -> None:
    c = _clicks()
    spec = build_feature_spec(c, None)
    seq = Sequences.from_clicks(c, spec.items, spec.users)
    log_p = item_log_prob_counting(seq.item_index, spec.num_items)
    data, _ = _data(log_p=log_p)
    (batch,) = list(data.batches(16, torch.Generator().manual_seed(0)))
    B = batch.size
    assert B == 6  # every click with >= 1 earlier click of its user
    counts = np.bincount(seq.item_index, minlength=spec.num_items)
    want = np.log(B * counts[batch.candidates.numpy()] / counts.sum())
    np.testing.assert_allclose(batch.log_q.numpy(), want, rtol=1e-5)


def test_sampled_negatives_are_appended_with_their_own_log_q() -> None:
    data, spec = _data(sampler=UniformSampler(6), num_sampled=4,
                       log_p=np.log(np.full(6, 1 / 6, dtype=np.float32)))
    (batch,) = list(data.batches(16, torch.Generator().manual_seed(0)))
    assert batch.candidates.shape == (10,)
    # uniform sampler: expected count of each item among 4 draws = 4/6
    np.testing.assert_allclose(batch.log_q[6:].numpy(), math.log(4 / 6), rtol=1e-5)


def test_without_in_batch_only_the_diagonal_and_sampled_columns_count() -> None:
    data, _ = _data(sampler=UniformSampler(6), num_sampled=3, in_batch=False)
    (batch,) = list(data.batches(16, torch.Generator().manual_seed(0)))
    m = batch.extra_mask
    assert m.shape == (6, 9)
    assert not m.diagonal().any() and m[:, :6].sum() == 30 and not m[:, 6:].any()


def test_user_history_mask_marks_the_users_own_clicks() -> None:
    c = _clicks()
    spec = build_feature_spec(c, None)
    seq = Sequences.from_clicks(c, spec.items, spec.users)
    keys = make_user_item_keys(seq.user_index, seq.item_index, spec.num_items)
    data, _ = _data(user_item_keys=keys)
    (batch,) = list(data.batches(16, torch.Generator().manual_seed(0)))
    clicked = {(u, i) for u, i in zip(seq.user_index, seq.item_index)}
    for r in range(batch.size):
        for j, item in enumerate(batch.candidates.tolist()):
            assert bool(batch.extra_mask[r, j]) == ((int(batch.user_index[r]), item) in clicked)


def test_streaming_logq_updates_with_each_batch_at_its_global_step_then_reads() -> None:
    """Two epochs of 3 batches from global step 10: batch b of epoch e is recorded at step
    10 + 3e + b and its log_q is read after that update. A second estimator fed the same batches
    by hand agrees exactly (reading before the update would differ on the second epoch's
    re-sightings, whose gap is not the bucket's previous average)."""
    data, _ = _data(estimator=StreamingFrequencyEstimator(num_buckets=64, alpha=0.5))
    g = torch.Generator().manual_seed(0)
    batches = [b for e in range(2) for b in data.batches(2, g, start_step=10 + 3 * e)]
    assert len(batches) == 6 and data.estimator is not None and data.estimator.step == 15
    ref = StreamingFrequencyEstimator(num_buckets=64, alpha=0.5)
    for t, batch in enumerate(batches, start=10):
        ref.update(batch.candidates.numpy(), t)
        np.testing.assert_array_equal(batch.log_q.numpy(), ref.log_prob(batch.candidates.numpy()))


def test_user_history_mask_covers_the_sampled_columns() -> None:
    c = _clicks()
    spec = build_feature_spec(c, None)
    seq = Sequences.from_clicks(c, spec.items, spec.users)
    keys = make_user_item_keys(seq.user_index, seq.item_index, spec.num_items)
    data, _ = _data(user_item_keys=keys, sampler=UniformSampler(spec.num_items), num_sampled=8)
    (batch,) = list(data.batches(16, torch.Generator().manual_seed(0)))
    clicked = {(u, i) for u, i in zip(seq.user_index, seq.item_index)}
    assert batch.extra_mask.shape == (6, 14)
    want = [[(int(u), item) in clicked for item in batch.candidates.tolist()] for u in batch.user_index]
    assert batch.extra_mask.tolist() == want
    assert batch.extra_mask[:, 6:].any()  # some sampled negative is a user's own click


@pytest.mark.parametrize("kind", ["softmax", "debiased", "triplet"])
def test_batch_loss_matches_manual_recipe(kind: str) -> None:
    torch.manual_seed(0)
    data, spec = _data()
    model = build_two_tower(spec, ModelConfig(embedding_dim=4), UserTowerConfig(history_length=2),
                            ItemTowerConfig(encoders=("id",)))
    b = Batch(history=torch.tensor([[1, -1], [0, 2], [3, 0]]), user_index=torch.tensor([0, 1, 2]),
              candidates=torch.tensor([2, 4, 2]),  # row 2's positive duplicates row 0's
              log_q=torch.tensor([0.5, -1.0, 0.5]))
    cfg = LossConfig(kind=kind, temperature=0.5)
    got = batch_loss(model, b, cfg)
    u, v = model(b.history, b.user_index, b.candidates)
    s = (u @ v.T).detach()
    if kind == "triplet":
        # valid negatives: (0,1), (1,0), (1,2), (2,1); (0,2), (2,0) are accidental hits
        pairs = [(0, 1), (1, 0), (1, 2), (2, 1)]
        want = sum(max(0.0, 0.2 - s[i, i] + s[i, j]) for i, j in pairs) / len(pairs)
    else:
        logits = s / 0.5 - b.log_q
        rows = []
        for i in range(3):
            neg = [j for j in range(3) if j != i and not (i != j and b.candidates[j] == b.candidates[i])]
            pos = math.exp(logits[i, i])
            sneg = sum(math.exp(logits[i, j]) for j in neg)
            if kind == "debiased":
                n = len(neg)
                ng = max((-0.1 * n * pos + sneg) / 0.9, n * math.exp(-1 / 0.5))
                rows.append(-math.log(pos / (pos + ng)))
            else:
                rows.append(-math.log(pos / (pos + sneg)))
        want = sum(rows) / 3
    assert got.item() == pytest.approx(float(want), rel=1e-4)


def test_fold_in_auto_is_sum_for_cold_start_and_fit_otherwise() -> None:
    from recsys_cl.config import RunConfig, load_config
    from recsys_cl.train.steps import FoldIn

    def method(*overrides: str) -> str:
        return FoldIn.from_config(load_config(None, RunConfig, list(overrides))).method

    assert method("split.kind=cold_start") == "sum"
    assert method("split.kind=temporal", "eval.catalogue=all_items") == "fit"
    assert method() == "fit"  # leave_last_out (serving overrides it with candidates.fold_in anyway)
    assert method("split.kind=cold_start", "item_tower.fold_in_method=fit") == "fit"  # explicit wins
    assert method("split.kind=temporal", "item_tower.fold_in_method=sum") == "sum"
    fold = FoldIn.from_config(load_config(None, RunConfig, ["loss.temperature=0.2", "item_tower.fold_in_step=0.5"]))
    assert (fold.temperature, fold.step, fold.normalize) == (0.2, 0.5, True)


def test_fit_click_sample_keeps_every_new_item_click_and_weights_the_sampled_others() -> None:
    """One click per user: the user sample is a sample of clicks, with the same counts and weights."""
    from recsys_cl.train.steps import fit_click_sample

    # under the cap: everything, weight 1
    on_new = np.array([False, True, False, False, True])
    keep, w = fit_click_sample(on_new, np.arange(5), cap=5)
    np.testing.assert_array_equal(keep, np.arange(5))
    np.testing.assert_array_equal(w, np.ones(5))
    # 3 new-item clicks among 1,000: all 3 kept (weight 1); 97 of the 997 others, weight 997 / 97 each
    on_new = np.zeros(1000, dtype=bool)
    on_new[[10, 500, 999]] = True
    users = np.arange(1000)
    keep, w = fit_click_sample(on_new, users, cap=100)
    assert len(keep) == 100 and np.all(np.diff(keep) > 0)
    assert set(np.nonzero(on_new)[0]) <= set(keep.tolist())
    np.testing.assert_array_equal(w[on_new[keep]], np.ones(3))
    np.testing.assert_allclose(w[~on_new[keep]], np.full(97, 997 / 97))
    assert w[~on_new[keep]].sum() == pytest.approx(997)  # each group's weights add up to its clicks
    # seeded: the same sample again
    np.testing.assert_array_equal(fit_click_sample(on_new, users, cap=100)[0], keep)
    # new-item clicks beyond half the cap are sampled too, so the others still fill half
    on_new = np.arange(1000) < 700
    keep, w = fit_click_sample(on_new, users, cap=100)
    assert on_new[keep].sum() == 50 and (~on_new[keep]).sum() == 50
    np.testing.assert_allclose(w[on_new[keep]], np.full(50, 700 / 50))
    np.testing.assert_allclose(w[~on_new[keep]], np.full(50, 300 / 50))
    # only new-item clicks: they take the whole cap
    keep, w = fit_click_sample(np.ones(300, dtype=bool), np.arange(300), cap=100)
    assert len(keep) == 100 and np.allclose(w, 3.0)
    assert fit_click_sample(np.zeros(0, dtype=bool), np.zeros(0, dtype=int), cap=10)[0].shape == (0,)


def test_fit_click_sample_by_user_keeps_whole_users_and_is_unbiased() -> None:
    from recsys_cl.train.steps import fit_click_sample

    rng = np.random.default_rng(0)
    users = rng.integers(0, 400, 3000)  # about 7.5 clicks per user, unevenly
    on_new = np.zeros(3000, dtype=bool)
    on_new[:20] = True
    keep, w = fit_click_sample(on_new, users, cap=500)
    assert set(range(20)) <= set(keep.tolist()) and np.all(w[:20] == 1.0)  # new items' clicks: all, weight 1
    others = keep[~on_new[keep]]
    kept_users = np.unique(users[others])
    other_users = np.unique(users[~on_new])
    m = round(480 * len(other_users) / 2980)
    assert len(kept_users) == m  # m users drawn ...
    np.testing.assert_array_equal(np.sort(others), np.nonzero(~on_new & np.isin(users, kept_users))[0])  # ... whole
    np.testing.assert_allclose(w[~on_new[keep]], len(other_users) / m)
    # unbiased: over seeds, the weighted count of the other clicks averages the true 2,980
    totals = []
    for seed in range(300):
        keep, w = fit_click_sample(on_new, users, 500, seed=seed)
        totals.append(w[~on_new[keep]].sum())
    assert abs(np.mean(totals) / 2980 - 1) < 0.01 and np.std(totals) > 10  # random, right on average
    # a window within the cap is kept whole, by user or not
    keep, w = fit_click_sample(on_new, users, cap=5000)
    assert len(keep) == 3000 and np.all(w == 1.0)


def _model_batch_and_queue():
    """A model, a batch of 3 rows with 2 sampled columns (C = 5) and 2 queued columns, all with log_q."""
    torch.manual_seed(0)
    _, spec = _data()
    model = build_two_tower(spec, ModelConfig(embedding_dim=4), UserTowerConfig(history_length=2),
                            ItemTowerConfig(encoders=("id",)))
    b = Batch(history=torch.tensor([[1, -1], [0, 2], [3, 0]]), user_index=torch.tensor([0, 1, 2]),
              candidates=torch.tensor([2, 4, 5, 1, 3]), log_q=torch.tensor([0.5, -1.0, 0.5, -2.0, -0.3]))
    q_ids = torch.tensor([0, 3])
    queued = QueuedNegatives(model.item_tower(q_ids).detach(), q_ids, torch.tensor([0.3, -0.7]))
    return model, b, queued


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_logq_weight_scales_log_q_of_in_batch_sampled_and_queued_columns(w: float) -> None:
    """s / tau - w log q on all 7 columns, by hand."""
    model, b, queued = _model_batch_and_queue()
    got = batch_loss(model, b, LossConfig(temperature=0.5, logq_weight=w), queued)
    u, v = model(b.history, b.user_index, b.candidates)
    v = torch.cat([v, queued.items]).detach()
    log_q = torch.cat([b.log_q, queued.log_q])
    logits = (u.detach() @ v.T) / 0.5 - w * log_q  # (3, 7); no column repeats a row's positive: no mask
    want = sum(-math.log(math.exp(logits[i, i]) / sum(math.exp(x) for x in logits[i])) for i in range(3)) / 3
    assert got.item() == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("hard_kind", ["none", "topk", "mochi"])
def test_logq_weight_is_the_same_as_scaling_every_log_q_and_zero_is_no_logq(hard_kind: str) -> None:
    """The weight reaches every column the same way (MoCHi's synthetic mixes too): weight w on log_q
    equals weight 1 on w * log_q, and weight 0 equals a batch and queue without log_q."""
    model, b, queued = _model_batch_and_queue()
    hard = load_config(None, RunConfig, [f"negatives.hard.kind={hard_kind}", "negatives.hard.topk.k=2",
                                         "negatives.hard.mochi.n_hard=3"]).negatives.hard

    def loss(w: float, scale: float | None) -> float:
        bb = dataclasses.replace(b, log_q=None if scale is None else scale * b.log_q)
        qq = dataclasses.replace(queued, log_q=None if scale is None else scale * queued.log_q)
        return batch_loss(model, bb, LossConfig(temperature=0.5, logq_weight=w), qq, hard,
                          torch.Generator().manual_seed(0)).item()

    assert loss(0.3, 1.0) == pytest.approx(loss(1.0, 0.3), rel=1e-6)
    assert loss(0.3, 1.0) != pytest.approx(loss(1.0, 1.0), rel=1e-4)  # the weight changes the loss
    assert loss(0.0, 1.0) == loss(1.0, None)
