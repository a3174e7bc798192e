# %% [markdown]
# # Compare runs: every run of an experiment in one table, ablation plots, the best run
#
# Reads the MLflow store the pipelines write to (`train_two_tower`, `sweep`, `ablation`,
# `evaluate_baselines`). Environment knobs (the test sets them): RECSYS_CL_TRACKING_URI (default
# `sqlite:///mlflow.db`), RECSYS_CL_EXPERIMENT (default `recsys_cl`). Notebooks may use mlflow
# directly; library code goes through `recsys_cl.tracking`.

# %%
import hashlib
import os

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

mlflow.set_tracking_uri(os.environ.get("RECSYS_CL_TRACKING_URI", "sqlite:///mlflow.db"))
experiment = os.environ.get("RECSYS_CL_EXPERIMENT", "recsys_cl")
runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'")
print(f"{len(runs)} finished runs in experiment {experiment!r}")

# %% [markdown]
# ## One row per model run (sweep parents, which only summarise their children, are left out)
#
# Every run carries the same tags (`model`, `loss_kind`, `negatives`, `dataset`, `protocol`,
# `git_commit`, `sweep_id` for sweeps), so the same columns work for two-tower and baseline runs.
# `val/recall_at_20` is the logged `best/val/recall_at_20`: the validation of the model whose test
# numbers these are (a two-tower run's best epoch, a baseline's chosen hyperparameters); the logged
# `val/*` of a two-tower run is a curve over epochs, and a search shows its last epoch.

# %%
metrics = ["test/recall_at_20", "test/ndcg_at_20", "test/recall_at_50", "test/mrr", "test/coverage_at_20"]
cols = {"tags.mlflow.runName": "run", "tags.model": "model", "tags.loss_kind": "loss",
        "tags.negatives": "negatives", "tags.logq": "logq", "params.loss.temperature": "tau",
        "params.train.seed": "seed", "metrics.best/val/recall_at_20": "val/recall_at_20",
        **{f"metrics.{m}": m for m in metrics}}
# a sweep's or an ablation's parent run trains no model of its own
parent = pd.concat([runs.get(t, pd.Series(index=runs.index, dtype=object)) == "parent"
                    for t in ("tags.sweep", "tags.ablation")], axis=1).any(axis=1)
models = runs[~parent]
table = models.reindex(columns=["run_id", *cols]).rename(columns=cols)
table = table.dropna(subset=["test/recall_at_20"]).sort_values("test/recall_at_20", ascending=False)
pd.set_option("display.width", 200)
print(table.drop(columns="run_id").to_string(index=False, float_format=lambda v: f"{v:.4f}"))

# %% [markdown]
# ## Ablation plot: test Recall@20 per configuration (mean ± std over seeds), baselines included
#
# A configuration is every param except the seed and bookkeeping (tracking, progress, checkpoints):
# runs that differ in anything else (epochs, history length ...) are never averaged together. Of
# several runs of one configuration and seed, only the newest counts, so the error bar is the spread
# over seeds and nothing else. The bracket holds a short id of the configuration.

# %%
bookkeeping = ("params.tracking.", "params.train.seed", "params.train.progress", "params.train.checkpoint_dir",
               "params.train.resume", "params.sweep.")
param_cols = sorted(c for c in models.columns if c.startswith("params.") and not c.startswith(bookkeeping))
config_id = models[param_cols].astype(object).fillna("").astype(str).agg("|".join, axis=1).map(
    lambda s: hashlib.sha1(s.encode()).hexdigest()[:6])
table["config_id"] = config_id.reindex(table.index)
table["start_time"] = models["start_time"].reindex(table.index)
table = table.sort_values("start_time", ascending=False).drop_duplicates(subset=["config_id", "seed"])
table["config"] = table.apply(
    lambda r: (r["model"] if r["model"] != "two_tower"
               else f"two_tower {r['loss']} τ={r['tau']} logq={r['logq']}") + f" [{r['config_id']}]",
    axis=1)
agg = table.groupby("config")["test/recall_at_20"].agg(["mean", "std", "count"]).sort_values("mean")
print(agg)
fig, ax = plt.subplots(figsize=(8, 0.5 * len(agg) + 1.5))
ax.barh(agg.index, agg["mean"], xerr=agg["std"].fillna(0.0), capsize=3,
        color=["tab:grey" if not c.startswith("two_tower") else "tab:blue" for c in agg.index])
ax.set(xlabel="test Recall@20 (full ranking)", title="Runs compared")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Learning curves of the two-tower runs (validation Recall@20 per epoch)

# %%
client = mlflow.MlflowClient()
fig, ax = plt.subplots(figsize=(7, 4))
for _, r in models[models["tags.model"] == "two_tower"].iterrows():
    hist = client.get_metric_history(r["run_id"], "val/recall_at_20")
    ax.plot([m.step for m in hist], [m.value for m in hist], marker="o", label=r["tags.mlflow.runName"])
ax.set(xlabel="epoch", ylabel="val Recall@20", title="Validation during training")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## The best run, chosen on validation (its test numbers are reported, not used to choose)

# %%
two = table[table["model"] == "two_tower"].dropna(subset=["val/recall_at_20"])
best = two.loc[two["val/recall_at_20"].idxmax()]
print(f"best run: {best['run']} ({best['run_id']}), val recall@20 {best['val/recall_at_20']:.4f}, "
      f"test recall@20 {best['test/recall_at_20']:.4f}")
print({k: v for k, v in client.get_run(best["run_id"]).data.params.items() if k.startswith(("loss.", "negatives."))})

# %% [markdown]
# A sweep's parent run holds its summary table as an artifact (`sweep/summary.md`):

# %%
parents = runs[runs.get("tags.sweep", pd.Series(index=runs.index, dtype=object)) == "parent"]
for run_id in parents["run_id"][:1]:
    print(mlflow.artifacts.load_text(f"runs:/{run_id}/sweep/summary.md"))
plt.close("all")
