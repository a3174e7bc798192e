"""NegativeMemory (queue + momentum tower) inside fit(): logQ of queued columns, resume."""

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_cl.config import (
    ItemTowerConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UserTowerConfig,
    load_config,
)
from recsys_cl.data.item_stats import item_log_prob_counting
from recsys_cl.data.negatives import make_user_item_keys
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.loop import fit
from recsys_cl.train.negative_memory import NegativeMemory


def _clicks(n_users: int = 60, n_items: int = 30, length: int = 8) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    items = (rng.integers(0, n_items, n_users)[:, None] + np.arange(length)[None, :]) % n_items
    return pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), length), "item_id": items.ravel(),
        "timestamp": np.tile(np.arange(length), n_users) + 1_000_000_000,
        "row_order": np.arange(n_users * length),
    })


def _setup():
    clicks = _clicks()
    spec = build_feature_spec(clicks, None)
    seq = Sequences.from_clicks(clicks, spec.items, spec.users)
    data = TrainingData(
        sequences=seq, positions=seq.training_positions(), history_length=3, num_items=spec.num_items,
        log_p=item_log_prob_counting(seq.item_index, spec.num_items),
        user_item_keys=make_user_item_keys(seq.user_index, seq.item_index, spec.num_items),
    )
    torch.manual_seed(0)
    model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                            ItemTowerConfig(encoders=("id",)))
    return data, model


def _negatives(*overrides: str):
    return load_config(None, RunConfig, list(overrides)).negatives


def test_queue_columns_carry_ids_per_source_log_q_and_user_history_mask() -> None:
    data, model = _setup()
    mem = NegativeMemory(_negatives("negatives.queue.kind=cross_batch", "negatives.queue.size=50").queue,
                         model.item_tower, 8, data)
    batches = iter(data.batches(16, torch.Generator().manual_seed(0)))
    b1 = next(batches)
    assert mem.columns(b1) is None  # empty queue: no extra columns
    mem.update(model.item_tower, b1)
    b2 = next(batches)
    col = mem.columns(b2)
    assert torch.equal(col.ids, b1.candidates[:16])
    # per-source expected count: log(F * p_j) with F = 16 filled slots
    np.testing.assert_allclose(col.log_q.numpy(), math.log(16) + data.log_p[b1.candidates[:16].numpy()],
                               rtol=1e-5)
    assert torch.equal(col.out_of_scope, data.user_clicked(b2.user_index, col.ids))
    torch.testing.assert_close(col.items, model.item_tower(col.ids).detach())


def test_moco_keys_come_from_the_momentum_tower() -> None:
    data, model = _setup()
    mem = NegativeMemory(_negatives("negatives.queue.kind=moco", "negatives.queue.momentum=0.5").queue,
                         model.item_tower, 8, data)
    k0 = mem.key_tower.encoders["id"].embedding.weight.clone()
    with torch.no_grad():
        model.item_tower.encoders["id"].embedding.weight.add_(1.0)
    b = next(iter(data.batches(16, torch.Generator().manual_seed(0))))
    mem.update(model.item_tower, b)
    q = model.item_tower.encoders["id"].embedding.weight
    torch.testing.assert_close(mem.key_tower.encoders["id"].embedding.weight, 0.5 * k0 + 0.5 * q)
    torch.testing.assert_close(mem.queue.negatives()[0], mem.key_tower(b.candidates[:16]))


@pytest.mark.parametrize("overrides", [
    ("negatives.queue.kind=moco", "negatives.queue.size=40", "negatives.hard.kind=mochi",
     "negatives.hard.mochi.n_hard=8", "negatives.hard.mochi.n_mix=4", "negatives.hard.mochi.n_query_mix=2"),
    ("negatives.queue.kind=cross_batch", "negatives.queue.size=40", "negatives.hard.kind=topk",
     "negatives.hard.topk.k=5"),
])
def test_fit_with_queue_and_hard_negatives_resumes_identically(tmp_path: Path, overrides) -> None:
    negatives = _negatives(*overrides)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.02, seed=1, patience=10, progress=False)

    def run(crash_after=None, path=None):
        data, model = _setup()

        def on_epoch_end(epoch, metrics):
            if crash_after is not None and epoch == crash_after:
                raise KeyboardInterrupt("simulated kill")

        return fit(model, data, cfg, LossConfig(), lambda m: {"recall@20": 0.5},
                   on_epoch_end=on_epoch_end, checkpoint_path=path, negatives=negatives)

    straight = run()
    losses = [h["train_loss"] for h in straight.history]
    assert all(math.isfinite(x) for x in losses)
    ck = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        run(crash_after=2, path=ck)
    assert torch.load(ck, weights_only=False)["negative_memory"]["queue"]["filled"] == 40
    resumed = run(path=ck)
    assert resumed.resumed_from_epoch == 1
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(losses, rel=1e-6)
