"""fit(): AdamW, early stopping on validation Recall@20, best weights kept, resumable.

The loop owns no reporting: it calls ``on_epoch_end(epoch, metrics)`` and the caller logs.

Distributed (a ``torch.distributed`` process group is initialised, e.g. under torchrun): the model
is wrapped in DistributedDataParallel; every rank draws the same seeded permutation and batches,
encodes its shard of each batch (see :func:`recsys_cl.train.steps.encode_batch`) and computes the
loss of the global batch. Only rank 0 evaluates, calls ``on_epoch_end`` and writes checkpoints;
its validation metrics and the early-stopping decision are broadcast, so every rank stops together.
Without a process group none of this runs.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_cl.config import LossConfig, NegativesConfig, TrainConfig
from recsys_cl.towers.two_tower import TwoTower
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.checkpoint import atomic_torch_save, load_checkpoint
from recsys_cl.train.negative_memory import NegativeMemory
from recsys_cl.train.steps import batch_loss
from recsys_cl.utils import dist
from recsys_cl.utils.threads import warn_if_cores_busy

log = logging.getLogger(__name__)

EvalFn = Callable[[TwoTower], Mapping[str, float]]
EpochCallback = Callable[[int, Mapping[str, float]], None]
SELECT_METRIC = "recall@20"


@dataclass
class FitResult:
    model: TwoTower
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from_epoch: int = 0


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def fit(
    model: TwoTower,
    data: TrainingData,
    cfg: TrainConfig,
    loss_cfg: LossConfig,
    evaluate: EvalFn,
    on_epoch_end: EpochCallback | None = None,
    checkpoint_path: str | Path | None = None,
    extra_state: Mapping[str, Any] | None = None,
    negatives: NegativesConfig | None = None,
) -> FitResult:
    """Train ``model`` on ``data``; select the epoch with the best validation Recall@20.

    Args:
        evaluate: model -> validation metrics (must contain ``recall@20``).
        on_epoch_end: called with (epoch, {"train_loss", "examples_per_s", "val/...": ...}).
        checkpoint_path: where the last epoch's full state is written (atomically) after every
            epoch; when it exists at start and ``cfg.resume``, training continues from it.
        extra_state: saved inside the checkpoint (e.g. the MLflow run id), returned on resume
            via ``load_checkpoint``.
        negatives: the ``negatives`` section, for its queue (``queue``) and hard negatives
            (``hard``); None = neither (in-batch and sampled negatives come with ``data``).
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    elif dist.is_main():
        warn_if_cores_busy(cfg.num_threads)
    generator = seed_everything(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, best_epoch, best_score, bad_epochs = 1, 0, -1.0, 0
    best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    memory = _negative_memory(negatives, model, data)
    hard = negatives.hard if negatives is not None and negatives.hard.kind != "none" else None
    state = load_checkpoint(checkpoint_path) if (checkpoint_path and cfg.resume and dist.is_main()) else None
    state = dist.broadcast_object(state)  # rank 0's checkpoint on every rank
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if data.estimator is not None and state.get("estimator") is not None:
            data.estimator.load_state_dict(state["estimator"])
        if memory is not None and state.get("negative_memory") is not None:
            memory.load_state_dict(state["negative_memory"])
        start_epoch = state["epoch"] + 1
        best_epoch, best_score, bad_epochs = state["best_epoch"], state["best_score"], state["bad_epochs"]
        best_state, best_metrics, history = state["best_state"], state["best_metrics"], state["history"]
        log.info("resumed from %s after epoch %d", checkpoint_path, state["epoch"])

    train_model = _wrap_distributed(model)
    steps_per_epoch = data.num_batches(cfg.batch_size)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        if dist.broadcast_object(bad_epochs >= cfg.patience):  # rank 0 decides for everyone
            stopped_early = True
            break
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            data.batches(cfg.batch_size, generator, start_step=(epoch - 1) * steps_per_epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=True if not cfg.progress or not dist.is_main() else None,  # None: off when not a terminal
            leave=False,
        )
        for batch in bar:
            queued = memory.columns(batch) if memory is not None else None
            loss = batch_loss(train_model, batch, loss_cfg, queued, hard, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}; lower train.lr or "
                    "raise loss.temperature"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if memory is not None:
                memory.update(model.item_tower, batch)  # after backward: the queue was read
            total += loss.item() * batch.size
            seen += batch.size
            bar.set_postfix(loss=f"{total / seen:.4f}", ex_per_s=f"{seen / (time.perf_counter() - t0):.0f}")
        train_time = time.perf_counter() - t0
        val = evaluate(model) if dist.is_main() else None  # other ranks wait for rank 0's numbers
        metrics = {f"val/{k}": float(v) for k, v in dist.broadcast_object(val).items()}
        metrics.update(
            train_loss=total / max(seen, 1),
            examples_per_s=seen / max(train_time, 1e-9),
            epoch_seconds=time.perf_counter() - t0,
        )
        history.append(metrics)
        score = metrics[f"val/{SELECT_METRIC}"]
        if score > best_score:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            best_metrics = dict(metrics)
        else:
            bad_epochs += 1
        log.info(
            "epoch %d: loss %.4f, val recall@20 %.4f (best %.4f @ %d), %.1fs",
            epoch, metrics["train_loss"], score, best_score, best_epoch, train_time,
        )
        if on_epoch_end is not None and dist.is_main():
            on_epoch_end(epoch, metrics)
        if checkpoint_path and dist.is_main():
            atomic_torch_save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "estimator": data.estimator.state_dict() if data.estimator else None,
                    "negative_memory": memory.state_dict() if memory is not None else None,
                    "best_epoch": best_epoch,
                    "best_score": best_score,
                    "bad_epochs": bad_epochs,
                    "best_state": best_state,
                    "best_metrics": best_metrics,
                    "history": history,
                    "extra": dict(extra_state or {}),
                },
                checkpoint_path,
            )
    else:
        stopped_early = bad_epochs >= cfg.patience and best_epoch < cfg.epochs
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_epoch, best_metrics, history, stopped_early, start_epoch - 1)


def _negative_memory(
    negatives: NegativesConfig | None, model: TwoTower, data: TrainingData
) -> NegativeMemory | None:
    if negatives is None or negatives.queue.kind == "none":
        return None
    return NegativeMemory(negatives.queue, model.item_tower, model.item_tower.dim, data)


def _wrap_distributed(model: TwoTower) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` in a distributed run; ``model`` itself otherwise.

    DDP broadcasts rank 0's parameters at construction (after any resume). Buffers are constant
    lookup tables (genres, known items), so they are not re-broadcast every forward.
    """
    if dist.world_size() == 1:
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():  # torch 2.13 suggests forward_sync_buffers; it still syncs at init
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(model, broadcast_buffers=False)
