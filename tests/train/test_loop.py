"""fit(): learns planted structure, is deterministic by seed, resumes after a crash."""

import io
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_cl.config import ItemTowerConfig, LossConfig, ModelConfig, TrainConfig, UserTowerConfig
from recsys_cl.data.item_stats import item_log_prob_counting
from recsys_cl.features.sequences import Sequences
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.train.batches import TrainingData
from recsys_cl.train.loop import fit
from recsys_cl.train.steps import embed_items, embed_users
from recsys_cl.towers.two_tower import build_two_tower


def _planted_clicks(n_users: int = 120, n_items: int = 40, length: int = 12) -> pl.DataFrame:
    """Users walk through items in order: the next item is the previous + 1 (mod n_items)."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n_items, n_users)
    steps = np.arange(length)
    items = (starts[:, None] + steps[None, :]) % n_items
    return pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), length),
        "item_id": items.ravel(),
        "timestamp": np.tile(steps, n_users) + 1_000_000_000,
        "row_order": np.arange(n_users * length),
    })


def _setup(clicks: pl.DataFrame, logq: bool = True):
    spec = build_feature_spec(clicks, None)
    seq = Sequences.from_clicks(clicks, spec.items, spec.users)
    data = TrainingData(
        sequences=seq, positions=seq.training_positions(), history_length=3,
        num_items=spec.num_items,
        log_p=item_log_prob_counting(seq.item_index, spec.num_items) if logq else None,
    )
    model = build_two_tower(spec, ModelConfig(embedding_dim=16),
                            UserTowerConfig(history_length=3, pooling="attention"),
                            ItemTowerConfig(encoders=("id",)))
    return spec, seq, data, model


def _next_item_accuracy(model, seq: Sequences, spec) -> float:
    users = np.unique(seq.user_ids)
    hist = seq.last_windows(users, 3)
    u = embed_users(model, hist, np.full(len(users), -1))
    top = (u @ embed_items(model, spec.num_items).T).argmax(1).numpy()
    want = (spec.items.decode(hist[:, 0]) + 1) % spec.num_items
    return float((spec.items.decode(top) == want).mean())


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=64, lr=0.02, seed=1, patience=10, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_planted_next_item_structure() -> None:
    clicks = _planted_clicks()
    spec, seq, data, model = _setup(clicks)
    before = _next_item_accuracy(model, seq, spec)
    result = fit(model, data, _cfg(), LossConfig(temperature=0.1),
                 lambda m: {"recall@20": _next_item_accuracy(m, seq, spec)})
    after = _next_item_accuracy(result.model, seq, spec)
    assert before < 0.2 and after > 0.8, (before, after)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_numbers_and_early_stopping() -> None:
    clicks = _planted_clicks(60, 30, 8)
    scores = iter([0.1, 0.3, 0.2, 0.2, 0.2, 0.2])
    losses = []
    for _ in range(2):
        spec, seq, data, model = _setup(clicks)
        torch.manual_seed(0)
        model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                                ItemTowerConfig(encoders=("id",)))
        r = fit(model, data, _cfg(epochs=3), LossConfig(), lambda m: {"recall@20": 0.1})
        losses.append([h["train_loss"] for h in r.history])
    assert losses[0] == losses[1]
    spec, seq, data, model = _setup(clicks)
    r = fit(model, data, _cfg(epochs=6, patience=2), LossConfig(), lambda m: {"recall@20": next(scores)})
    assert r.best_epoch == 2 and r.stopped_early and len(r.history) == 4


def test_resume_after_crash_gives_identical_result(tmp_path: Path) -> None:
    clicks = _planted_clicks(60, 30, 8)
    ck = tmp_path / "ck.pt"

    def run(epochs: int, crash_after: int | None = None, path=None):
        spec, seq, data, model = _setup(clicks)
        torch.manual_seed(0)
        model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                                ItemTowerConfig(encoders=("id",)))
        calls = {"n": 0}

        def on_epoch_end(epoch, metrics):
            calls["n"] += 1
            if crash_after is not None and epoch == crash_after:
                raise KeyboardInterrupt("simulated kill")

        return fit(model, data, _cfg(epochs=epochs), LossConfig(), lambda m: {"recall@20": 0.5},
                   on_epoch_end=on_epoch_end, checkpoint_path=path)

    straight = run(4)
    with pytest.raises(KeyboardInterrupt):
        run(4, crash_after=2, path=ck)  # the epoch-2 callback raises before its checkpoint
    assert ck.exists()  # epoch 1 was checkpointed
    resumed = run(4, path=ck)
    assert resumed.resumed_from_epoch == 1
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in straight.history], rel=1e-6
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.progress=true: the bar on a terminal; piped into a log file (cron), no carriage-return updates."""
    clicks = _planted_clicks(60, 30, 8)
    for stream, drawn in ((io.StringIO(), False), (_Terminal(), True)):
        spec, seq, data, model = _setup(clicks)
        monkeypatch.setattr(sys, "stderr", stream)
        fit(model, data, _cfg(epochs=1, progress=True), LossConfig(), lambda m: {"recall@20": 0.1})
        assert ("epoch 1/1" in stream.getvalue()) is drawn


def test_embed_users_accepts_read_only_arrays_without_warning() -> None:
    """Arrow hands Spark executors read-only buffers; embed_users must not warn or differ on them."""
    import warnings

    spec, seq, _, model = _setup(_planted_clicks(n_users=20))
    users = np.unique(seq.user_ids)
    hist = seq.last_windows(users, 3)
    index = spec.users.encode(users)
    want = embed_users(model, hist, index, batch_size=7)
    hist_ro, index_ro = hist.copy(), index.copy()
    hist_ro.flags.writeable = False
    index_ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = embed_users(model, hist_ro, index_ro, batch_size=7)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("logq", ["counting", "streaming"])
def test_logq_weight_zero_trains_exactly_as_no_logq(logq: str) -> None:
    """loss.logq_weight reaches the loss through fit: weight 0 gives the losses and weights of
    loss.logq=none, step for step, with in-batch, uniform sampled and cross-batch queued negatives;
    weight 0.5 gives others."""
    from recsys_cl.config import RunConfig, load_config
    from recsys_cl.data.item_stats import StreamingFrequencyEstimator
    from recsys_cl.data.negatives import UniformSampler

    clicks = _planted_clicks(40, 20, 6)
    negatives = load_config(None, RunConfig, ["negatives.queue.kind=cross_batch", "negatives.queue.size=64"]).negatives

    def run(source: str, weight: float) -> tuple[list[float], dict[str, torch.Tensor]]:
        spec, seq, data, _ = _setup(clicks, logq=source == "counting")
        if source == "streaming":
            data.estimator = StreamingFrequencyEstimator(num_buckets=64, alpha=0.5)
        data.sampler, data.num_sampled = UniformSampler(spec.num_items), 8
        torch.manual_seed(0)
        model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                                ItemTowerConfig(encoders=("id",)))
        r = fit(model, data, _cfg(epochs=2, batch_size=32), LossConfig(logq=source, logq_weight=weight),
                lambda m: {"recall@20": 0.1}, negatives=negatives)
        return [h["train_loss"] for h in r.history], r.model.state_dict()

    losses, weights = run(logq, 0.0)
    none_losses, none_weights = run("none", 1.0)
    assert losses == none_losses
    assert all(torch.equal(weights[k], none_weights[k]) for k in none_weights)
    assert run(logq, 0.5)[0] != none_losses
