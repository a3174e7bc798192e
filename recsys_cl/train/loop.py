"""fit(): AdamW, early stopping on validation Recall@20, best weights kept, resumable.

The loop owns no reporting: it calls ``on_epoch_end(epoch, metrics)`` and the caller logs.
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

from recsys_cl.config import LossConfig, TrainConfig
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.checkpoint import atomic_torch_save, load_checkpoint
from recsys_cl.train.steps import batch_loss
from recsys_cl.towers.two_tower import TwoTower

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
) -> FitResult:
    """Train ``model`` on ``data``; select the epoch with the best validation Recall@20.

    Args:
        evaluate: model -> validation metrics (must contain ``recall@20``).
        on_epoch_end: called with (epoch, {"train_loss", "examples_per_s", "val/...": ...}).
        checkpoint_path: where the last epoch's full state is written (atomically) after every
            epoch; when it exists at start and ``cfg.resume``, training continues from it.
        extra_state: saved inside the checkpoint (e.g. the MLflow run id), returned on resume
            via ``load_checkpoint``.
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    generator = seed_everything(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, best_epoch, best_score, bad_epochs = 1, 0, -1.0, 0
    best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    state = load_checkpoint(checkpoint_path) if (checkpoint_path and cfg.resume) else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if data.estimator is not None and state.get("estimator") is not None:
            data.estimator.load_state_dict(state["estimator"])
        start_epoch = state["epoch"] + 1
        best_epoch, best_score, bad_epochs = state["best_epoch"], state["best_score"], state["bad_epochs"]
        best_state, best_metrics, history = state["best_state"], state["best_metrics"], state["history"]
        log.info("resumed from %s after epoch %d", checkpoint_path, state["epoch"])

    steps_per_epoch = data.num_batches(cfg.batch_size)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        if bad_epochs >= cfg.patience:
            stopped_early = True
            break
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            data.batches(cfg.batch_size, generator, start_step=(epoch - 1) * steps_per_epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for batch in bar:
            loss = batch_loss(model, batch, loss_cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch}; lower train.lr or "
                    "raise loss.temperature"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.size
            seen += batch.size
            bar.set_postfix(loss=f"{total / seen:.4f}", ex_per_s=f"{seen / (time.perf_counter() - t0):.0f}")
        train_time = time.perf_counter() - t0
        metrics = {f"val/{k}": float(v) for k, v in evaluate(model).items()}
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
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if checkpoint_path:
            atomic_torch_save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "estimator": data.estimator.state_dict() if data.estimator else None,
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
