# %% [markdown]
# # New items' first clicks, ranked among all items: sum vs fit (`candidates.fold_in`)
#
# The cold-start protocol (`split.kind=cold_start`) ranks new items **among themselves**, and there
# folding in their first clicks (`recsys_cl.towers.fold_in`) beats Popularity. Serving ranks them
# **together with** the items the model was trained on. This notebook measures that mixed ranking:
# a time-ordered split, every item of the item table ranked (items with training clicks and
# without), the user's history masked, and four versions of the items without training clicks:
#
# * content only (what the model gives them: the ID vector is zero),
# * summed (`sum`: `v + step * sum of clickers' user vectors`),
# * summed, then L2-normalised like every other item vector,
# * fitted (`candidates.fold_in: fit`: the new items' vectors fitted to the validation period's clicks
#   under the training loss, every other item fixed as a negative).
#
# Run it from the repository root: `python notebooks/06_fold_in_mixed_catalogue.py`
# (about a minute on 2 cores with the bundled data). Knobs: RECSYS_CL_DATA, RECSYS_CL_EPOCHS,
# RECSYS_CL_SEED, RECSYS_CL_OVERRIDES (more `key=value` overrides, separated by spaces),
# RECSYS_CL_FIT_CAP (`fit` on a window sampled down to this many clicks), RECSYS_CL_FIT_GRID (`fit`
# with other steps and learning rates).
# Measured results are in docs/content_and_cold_start.md ("Ranked among all items").

# %%
import dataclasses
import os

import numpy as np
import torch

from recsys_cl.config import RunConfig, load_config
from recsys_cl.eval.bootstrap import paired_bootstrap
from recsys_cl.eval.protocol import build_eval_set, evaluate, per_user_recall, top_k_items
from recsys_cl.experiment import artifact_resolver, prepare, training_data, two_tower_score_fn
from recsys_cl.features.sequences import Sequences
from recsys_cl.towers.content import load_pretrained_weights
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.loop import fit
from recsys_cl.train.steps import FoldIn, embed_items, embed_users, fold_in_items

seed = int(os.environ.get("RECSYS_CL_SEED", "0"))
cfg = load_config(None, RunConfig, overrides=[
    f"data.path={os.environ.get('RECSYS_CL_DATA', 'data/ml-latest-small')}",
    f"train.epochs={os.environ.get('RECSYS_CL_EPOCHS', '30')}",
    "split.kind=temporal", "train.progress=false", f"train.seed={seed}",
    *os.environ.get("RECSYS_CL_OVERRIDES", "").split(),
])
prep = prepare(cfg)
spec, L = prep.spec, cfg.user_tower.history_length
print(prep.protocol)

# %% [markdown]
# Train the default two-tower on the training period, selecting the epoch on validation as the
# training pipeline does (no MLflow here: nothing is kept).

# %%
torch.manual_seed(seed)
model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
load_pretrained_weights(model, spec.content_meta, artifact_resolver(cfg.tracking))


def validate(m):  # type: ignore[no-untyped-def]
    fn = two_tower_score_fn(m, spec, prep.split.train, prep.val_set, L, prep.ranked)
    return evaluate(fn, prep.val_set, ks=(20,), batch_size=1024)


model = fit(model, training_data(prep, cfg), cfg.train, cfg.loss, validate, negatives=cfg.negatives).model

# %% [markdown]
# Test targets split by whether the clicked item had training clicks; every item is ranked.

# %%
history, targets = prep.split.test_history(), prep.split.test_targets()
cold = spec.cold_items
is_cold = targets["item_id"].is_in(spec.items.ids[cold].tolist())
print(f"{len(cold)} items without training clicks; {float(is_cold.mean()):.0%} of the test clicks are on them")
subsets = {"all targets": targets, "warm targets": targets.filter(~is_cold),
           "new-item targets": targets.filter(is_cold)}

plain = embed_items(model, spec.num_items)
fold = FoldIn.from_config(cfg)
folded, _ = fold_in_items(model, spec, history, plain, L, dataclasses.replace(fold, method="sum"))
normalised = folded.clone()
normalised[cold] = torch.nn.functional.normalize(folded[cold], dim=-1)
# fit: to the validation period's clicks (the recent window), as serving fits to its active-user window
fitted, info = fold_in_items(model, spec, history, plain, L, dataclasses.replace(fold, method="fit"),
                             since=prep.split.train_end)
print(f"fit: {info['window_clicks']} clicks in the window, {info['clicks']} of them on {info['items']} new items")

seq = Sequences.from_clicks(history, spec.items, spec.users)
per_user = {}


def report(name, items):  # type: ignore[no-untyped-def]
    """Recall@20 of these item vectors on each subset of targets; per-user recall kept for the deltas."""
    line = []
    for label, frame in subsets.items():
        if frame.height == 0:
            line.append(f"{label}: none")
            continue
        es = build_eval_set(history, frame, spec.items, spec.users, "temporal, all items ranked", spec.items)
        users = embed_users(model, seq.last_windows(es.user_ids, L), spec.users.encode(es.user_ids))

        def score(rows, users=users, items=items):  # type: ignore[no-untyped-def]
            return (users[torch.as_tensor(rows)] @ items.T).numpy()

        m = evaluate(score, es, ks=(20,), batch_size=1024)
        line.append(f"{label} R@20 {m['recall@20']:.4f} ({len(es.user_ids)} users)")
        if label == "all targets":
            per_user[name] = per_user_recall(score, es, 20)
            top = top_k_items(score, es, 20)  # history masked, as the metrics and the served lists
            line.append(f"new items in the top 20: {np.isin(top[top >= 0], cold).mean():.0%}")
    print(f"{name:>20s}: " + "; ".join(line))


variants = {"content only": plain, "summed": folded, "summed + normalised": normalised, "fitted": fitted}
for name, items in variants.items():
    report(name, items)

# %% [markdown]
# Each way of taking in the clicks against content only, Recall@20 over all targets, with a 95%
# paired bootstrap over the test users.

# %%
for name in ("summed", "summed + normalised", "fitted"):
    if name in per_user:
        d = paired_bootstrap(per_user[name], per_user["content only"])
        print(f"{name} - content only, R@20 all targets: {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")

# %% [markdown]
# ## A window larger than `fit` reads
# Above `FoldIn.max_clicks` (20,000 by default; `candidates.fold_in_max_clicks` in the candidates
# jobs) clicks in its window, `fit` reads a sample
# (`recsys_cl.train.steps.fit_click_sample`): every click on a new item, and the other items' clicks
# of a uniform sample of their users, each weighted by the inverse of its sampling rate, so the loss
# estimates the whole window's. Until 2026-11-29 it read a uniform sample of the window, so a new item's few
# clicks were mostly dropped. Set `RECSYS_CL_FIT_CAP` below this window's size to compare, in the same
# run, the whole window, that uniform sample, the sample `fit` reads now, and the same sample without
# its weights (which over-counts the new items' clicks).

# %%
cap = int(os.environ.get("RECSYS_CL_FIT_CAP", "0"))
if cap:
    import recsys_cl.train.steps as steps
    from recsys_cl.towers.fold_in import fit_new_items

    window = history.filter(history["timestamp"] >= prep.split.train_end)
    idx = spec.items.encode(window["item_id"])
    known = np.nonzero(idx >= 0)[0]
    if cap >= len(known):
        print(f"RECSYS_CL_FIT_CAP={cap} is not below the window's {len(known)} clicks: set a smaller cap")
        cap = max(len(known) // 4, 1)
        print(f"using {cap}")
    uniform = np.sort(np.random.default_rng(0).choice(known, min(cap, len(known)), replace=False))

    def fit_on(sel):  # type: ignore[no-untyped-def]
        """The new items clicked among the window's clicks ``sel`` fitted to those clicks, unweighted."""
        rows = np.unique(idx[sel][np.isin(idx[sel], cold)])
        clickers, click_user = np.unique(window["user_id"].to_numpy()[sel], return_inverse=True)
        clicker_vectors = embed_users(model, seq.last_windows(clickers, L), spec.users.encode(clickers))
        out = plain.clone()
        out[torch.from_numpy(rows)] = fit_new_items(
            plain, torch.from_numpy(rows), clicker_vectors, torch.from_numpy(idx[sel]).long(),
            torch.from_numpy(click_user).long(), fold.temperature, fold.normalize)
        return out, len(rows)

    uniform_items, uniform_rows = fit_on(uniform)
    on_new = np.isin(idx[known], cold)
    chosen, _ = steps.fit_click_sample(on_new, window["user_id"].to_numpy()[known], cap)
    unweighted_items, _ = fit_on(known[chosen])  # fit's sample without its weights: new items over-counted
    sampled, sampled_info = fold_in_items(model, spec, history, plain, L,
                                          dataclasses.replace(fold, method="fit", max_clicks=cap),
                                          since=prep.split.train_end)
    print(f"cap {cap} of the window's {len(known)} clicks: the uniform sample holds "
          f"{int(np.isin(idx[uniform], cold).sum())} of the {info['clicks']} clicks on new items and moves "
          f"{uniform_rows} of the {info['items']} new items; fit's sample holds {int(on_new[chosen].sum())} of them "
          f"(all, up to half the cap), moving {sampled_info['items']}")
    report(f"fit, uniform {cap}", uniform_items)
    report(f"fit, sample {cap}", sampled)
    report(f"unweighted {cap}", unweighted_items)
    for a, b in ((f"fit, sample {cap}", f"fit, uniform {cap}"), (f"fit, sample {cap}", "fitted"),
                 (f"fit, uniform {cap}", "fitted"), (f"unweighted {cap}", "fitted")):
        d = paired_bootstrap(per_user[a], per_user[b])
        print(f"{a} - {b}, R@20 all targets: {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")

# %% [markdown]
# ## How much `fit`'s steps and learning rate matter
# `fit` runs 100 Adam steps at lr 0.05, fixed a priori. Set `RECSYS_CL_FIT_GRID` to `steps x lr`
# pairs (e.g. `"30x0.05 300x0.05 100x0.01 100x0.2"`) to refit with each and compare with the default in
# the same run. This reads test targets: a sensitivity check, not a way to choose them.

# %%
import functools  # noqa: E402

import recsys_cl.towers.fold_in as fold_in_module  # noqa: E402

default_fit = fold_in_module.fit_new_items
for pair in os.environ.get("RECSYS_CL_FIT_GRID", "").split():
    n_steps, lr = pair.split("x")
    fold_in_module.fit_new_items = functools.partial(default_fit, steps=int(n_steps), lr=float(lr))
    try:
        refit, _ = fold_in_items(model, spec, history, plain, L, dataclasses.replace(fold, method="fit"),
                                 since=prep.split.train_end)
    finally:
        fold_in_module.fit_new_items = default_fit
    name = f"fit, {n_steps} steps lr {lr}"
    report(name, refit)
    d = paired_bootstrap(per_user[name], per_user["fitted"])
    print(f"{name} - fitted (100 steps lr 0.05), R@20 all targets: {d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
