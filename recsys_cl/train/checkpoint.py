"""Checkpoints (resume after a crash) and model directories (the trained artifact).

A model directory holds ``model.pt`` (state dict), ``config.yaml`` (the run config) and
``features/`` (vocabularies and item features): enough to rebuild both towers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recsys_cl.config import RunConfig, dump_config, load_config
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.towers.two_tower import TwoTower, build_two_tower


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, then rename: never a half-written file."""
    from recsys_cl.io_atomic import write_file_atomically  # (io_atomic imports pyarrow)

    return write_file_atomically(path, lambda tmp: torch.save(obj, tmp))


class CheckpointError(Exception):
    """A training checkpoint exists but cannot be read; the message names the file and the fixes."""


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state :func:`recsys_cl.train.loop.fit` saved at ``path``, or None when there is no file.

    Raises:
        CheckpointError: the file cannot be read (truncated, overwritten, unreadable). It is not set
            aside to train afresh: a read error may be passing (a network disk, permissions) and the
            file hold epochs of work, so a person decides, with the two fixes the message names.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises EOFError, RuntimeError, OSError, UnpicklingError, ...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0].split('. ')[0] if str(e) else 'no message'}"
        raise CheckpointError(_unreadable(path, reason)) from e
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(_unreadable(path, f"it holds a {type(state).__name__}, not a training checkpoint"))
    return state


def _unreadable(path: Path, reason: str) -> str:
    return (f"the checkpoint {path} of an interrupted run with this config cannot be read ({reason}); delete it "
            "to train from the first epoch, or rerun with --set train.resume=false (its first epoch replaces it)")


def save_model_dir(directory: str | Path, model: TwoTower, spec: FeatureSpec, cfg: RunConfig) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), d / "model.pt")
    (d / "config.yaml").write_text(dump_config(cfg))
    spec.save(d / "features")
    return d


def load_model_dir(directory: str | Path) -> tuple[TwoTower, FeatureSpec, RunConfig]:
    """Rebuild the two towers from a model directory written by :func:`save_model_dir`."""
    d = Path(directory)
    missing = [n for n in ("model.pt", "config.yaml", "features") if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{d} is not a recsys_cl model directory: missing {missing}; expected model.pt, "
            "config.yaml and features/ as written by pipelines.train_two_tower"
        )
    cfg = load_config(d / "config.yaml", RunConfig)
    spec = FeatureSpec.load(d / "features")
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    model.load_state_dict(torch.load(d / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, spec, cfg
