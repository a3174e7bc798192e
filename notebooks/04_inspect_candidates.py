# %% [markdown]
# # Inspect candidates: a user's recent history beside their candidates, popularity and coverage
#
# Generates one night's candidates with `recsys_cl.candidates` (what `pipelines.generate_candidates`
# runs, without publishing an MLflow run) for the last day of the data, then looks at them.
# Environment knobs (the test sets them): RECSYS_CL_DATA, RECSYS_CL_TRACKING_URI, RECSYS_CL_EXPERIMENT,
# RECSYS_CL_MODEL (a model URI; default: the two-tower run with the best validation Recall@20 in the
# experiment).

# %%
import dataclasses
import os
import tempfile

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import polars as pl

from recsys_cl.candidates import load_model, read_partition, run
from recsys_cl.config import load_config
from recsys_cl.data.io import load_click_log

cfg = load_config(None, overrides=[
    f"data.path={os.environ.get('RECSYS_CL_DATA', 'data/ml-latest-small')}",
    f"tracking.uri={os.environ.get('RECSYS_CL_TRACKING_URI', 'sqlite:///mlflow.db')}",
    f"tracking.experiment={os.environ.get('RECSYS_CL_EXPERIMENT', 'recsys_cl')}",
])
model_uri = os.environ.get("RECSYS_CL_MODEL")
if not model_uri:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    best = mlflow.search_runs(
        # best/val/*: the tested epoch (val/* is the curve, its last epoch); best_epoch: a training
        # run, not a sweep's parent
        experiment_names=[cfg.tracking.experiment],
        filter_string="tags.model = 'two_tower' and metrics.best_epoch >= 1",
        order_by=["metrics.`best/val/recall_at_20` DESC"], max_results=1)
    model_uri = f"runs:/{best['run_id'][0]}/model"
loaded = load_model(model_uri, cfg.tracking)
print("model:", model_uri, "version label:", loaded.version_label)

# %% [markdown]
# Candidates for every user with a click in the lookback window ending on the last day of the data:
# the top K unseen items from an exact index built in memory. The nightly job's window is
# `candidates.lookback_days` = 30, in which only 16 of MovieLens latest-small's 610 users clicked
# (its users rate in bursts); this notebook widens it to ten years so that every user with a
# history gets candidates to look at, and keeps K at 10.

# %%
data = load_click_log(cfg.data)
clicks, items = data.clicks, data.items
last_day = pl.from_epoch(clicks["timestamp"], time_unit="s").max().date()
_scratch = tempfile.TemporaryDirectory(prefix="recsys_cl_nb04_")  # removed when the kernel exits
out_dir = _scratch.name
ccfg = dataclasses.replace(cfg.candidates, k=10, lookback_days=3650, output_dir=out_dir,
                           recall_sample=0, backend="exact")
result = run(ccfg, clicks, loaded, last_day)
cands = read_partition(result.partition)
m = result.manifest
print(f"{last_day}: {m['rows']} rows for {m['users_served']} of {m['users_active']} active users, "
      f"catalogue coverage {m['catalogue_coverage']:.1%}")

# %% [markdown]
# ## One user: their last clicks (newest first) beside their candidates, with titles

# %%
titles = items.select("item_id", "title")
user = clicks.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][0]
history = (clicks.filter(pl.col("user_id") == user).sort("timestamp", descending=True).head(10)
           .join(titles, on="item_id", how="left")
           .select(pl.from_epoch("timestamp", time_unit="s").dt.date().alias("date"), "item_id", "title"))
theirs = (cands.filter(pl.col("user_id") == user).join(titles, on="item_id", how="left")
          .select("rank", "item_id", "title", pl.col("score").round(3)))
print(f"user {user}: recent history")
print(history)
print(f"user {user}: candidates")
print(theirs)
seen = set(clicks.filter(pl.col("user_id") == user)["item_id"].to_list())
assert not seen & set(theirs["item_id"].to_list()), "seen items are never candidates"

# %% [markdown]
# ## Are the candidates just the popular items? Popularity of candidates vs of clicks, and coverage

# %%
pop = clicks.group_by("item_id").len().rename({"len": "clicks"})
cand_pop = cands.join(pop, on="item_id", how="left")["clicks"].fill_null(0).to_numpy()
click_pop = clicks.join(pop, on="item_id")["clicks"].to_numpy()
per_item = cands.group_by("item_id").len().sort("len", descending=True)
print(f"median popularity (training clicks) of a candidate: {np.median(cand_pop):.0f}, "
      f"of a clicked item: {np.median(click_pop):.0f}")
print(f"{per_item.height} distinct items among the candidates "
      f"({per_item.height / max(1, items.height):.1%} of the item table); most frequent:")
print(per_item.head(5).join(titles, on="item_id", how="left"))
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
bins = np.logspace(0, np.log10(max(2, pop["clicks"].max())), 20)
a.hist([click_pop, cand_pop], bins=bins, density=True, label=["clicked items", "candidates"])
a.set(xscale="log", xlabel="item popularity (clicks)", title="Popularity")
a.legend()
b.plot(np.arange(1, per_item.height + 1), per_item["len"].to_numpy())
b.set(xlabel="item (most recommended first)", ylabel="users it is a candidate for", title="Coverage")
fig.tight_layout()
plt.show()
plt.close("all")
