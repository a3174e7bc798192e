"""Two gloo processes on CPU train exactly like one process on the same global batch.

Each rank encodes its shard of every global batch and gathers the shards with gradient; DDP
averages the gradients. (a) the run completes, (b) parameters are identical across ranks,
(c) per-epoch losses and final parameters match a single-process run to float tolerance.
"""

import os
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

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
from recsys_cl.data.negatives import UniformSampler, make_user_item_keys
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.loop import fit
from recsys_cl.utils import dist

VARIANTS = {
    "in_batch": (),
    "moco+mochi+sampled": ("negatives.queue.kind=moco", "negatives.queue.size=48",
                           "negatives.queue.momentum=0.9", "negatives.hard.kind=mochi",
                           "negatives.hard.mochi.n_hard=8", "negatives.hard.mochi.n_mix=4",
                           "negatives.hard.mochi.n_query_mix=2"),
}


def _setup(variant: str):
    rng = np.random.default_rng(0)
    n_users, n_items, length = 50, 30, 8
    items = (rng.integers(0, n_items, n_users)[:, None] + np.arange(length)[None, :]) % n_items
    clicks = pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), length), "item_id": items.ravel(),
        "timestamp": np.tile(np.arange(length), n_users) + 1_000_000_000,
        "row_order": np.arange(n_users * length),
    })
    spec = build_feature_spec(clicks, None)
    seq = Sequences.from_clicks(clicks, spec.items, spec.users)
    sampled = variant != "in_batch"
    data = TrainingData(
        sequences=seq, positions=seq.training_positions(), history_length=3, num_items=spec.num_items,
        log_p=item_log_prob_counting(seq.item_index, spec.num_items),
        user_item_keys=make_user_item_keys(seq.user_index, seq.item_index, spec.num_items),
        sampler=UniformSampler(spec.num_items) if sampled else None, num_sampled=5 if sampled else 0,
    )
    torch.manual_seed(0)
    model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                            ItemTowerConfig(encoders=("id",)))
    return data, model


def _train(variant: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    data, model = _setup(variant)
    negatives = load_config(None, RunConfig, list(VARIANTS[variant])).negatives
    cfg = TrainConfig(epochs=2, batch_size=33, lr=0.02, seed=1, patience=10, progress=False)
    result = fit(model, data, cfg, LossConfig(), lambda m: {"recall@20": 0.5}, negatives=negatives)
    return [h["train_loss"] for h in result.history], {k: v.clone() for k, v in model.state_dict().items()}


def _first_step_gradients() -> dict[str, torch.Tensor]:
    """Parameter gradients after one backward of the first global batch (DDP-averaged)."""
    from recsys_cl.train.loop import _wrap_distributed
    from recsys_cl.train.steps import batch_loss

    data, model = _setup("moco+mochi+sampled")
    batch = next(iter(data.batches(33, torch.Generator().manual_seed(1))))
    ddp = _wrap_distributed(model)  # keep a reference: DDP's reducer must outlive backward()
    batch_loss(ddp, batch, LossConfig()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        assert dist.world_size() == world and dist.rank() == rank
        for variant in VARIANTS:
            losses, state = _train(variant)
            torch.save({"losses": losses, "state": state}, Path(out) / f"{variant}-{rank}.pt")
        torch.save(_first_step_gradients(), Path(out) / f"grads-{rank}.pt")
        tdist.barrier()  # both ranks done with every collective before either tears the group down
    finally:
        dist.destroy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)  # (a) completes
    assert dist.world_size() == 1  # the test process itself stays single-process
    for variant in VARIANTS:
        r0 = torch.load(tmp_path / f"{variant}-0.pt")
        r1 = torch.load(tmp_path / f"{variant}-1.pt")
        for k in r0["state"]:  # (b) identical across ranks
            assert torch.equal(r0["state"][k], r1["state"][k]), (variant, k)
        assert r0["losses"] == r1["losses"]
        losses, state = _train(variant)  # (c) one process, same global batches
        assert r0["losses"] == pytest.approx(losses, rel=1e-5), variant
        for k in state:
            torch.testing.assert_close(r0["state"][k], state[k], atol=1e-4, rtol=1e-4)
    # gradients, not only AdamW's (scale-invariant) updates: DDP's average equals the 1-process gradient
    single = _first_step_gradients()
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads-{rank}.pt")
        assert grads.keys() == single.keys()
        for k in single:
            torch.testing.assert_close(grads[k], single[k], atol=1e-6, rtol=1e-4)


def test_shards_cover_rows_in_rank_order() -> None:
    assert dist.shard_sizes(7) == [7] and dist.shard(7) == slice(0, 7)
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.is_main()
