# %% [markdown]
# # Item embeddings in 2-D, coloured by genre
#
# Every training run logs its item embeddings (`item_embeddings/item_embeddings.parquet`). Here they
# are projected to 2-D with PCA (and t-SNE when there are enough items) and coloured by each item's
# first genre; the nearest neighbours of a popular item are a quick sanity check.
# Environment knobs (the test sets them): RECSYS_CL_DATA, RECSYS_CL_TRACKING_URI,
# RECSYS_CL_EXPERIMENT, RECSYS_CL_RUN_ID (default: the two-tower run with the best validation Recall@20).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import polars as pl
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from recsys_cl.config import load_config
from recsys_cl.data.io import load_click_log

cfg = load_config(None, overrides=[f"data.path={os.environ.get('RECSYS_CL_DATA', 'data/ml-latest-small')}"])
mlflow.set_tracking_uri(os.environ.get("RECSYS_CL_TRACKING_URI", "sqlite:///mlflow.db"))
run_id = os.environ.get("RECSYS_CL_RUN_ID") or mlflow.search_runs(
    experiment_names=[os.environ.get("RECSYS_CL_EXPERIMENT", "recsys_cl")],
    # best/val/*: the tested epoch (val/* is the curve, its last epoch); best_epoch: a training run,
    # not a sweep's parent
    filter_string="tags.model = 'two_tower' and metrics.best_epoch >= 1",
    order_by=["metrics.`best/val/recall_at_20` DESC"], max_results=1,
)["run_id"][0]
_scratch = tempfile.TemporaryDirectory(prefix="recsys_cl_nb05_")  # removed when the kernel exits
local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="item_embeddings",
                                            dst_path=_scratch.name)
emb = pl.read_parquet(Path(local) / "item_embeddings.parquet")
data = load_click_log(cfg.data)
items = data.items
counts = data.clicks.group_by("item_id").len().rename({"len": "clicks"})
emb = (emb.join(items.select("item_id", "title", "genres"), on="item_id", how="left")
       .join(counts, on="item_id", how="left")
       .with_columns(pl.col("genres").list.first().fill_null("(none)").alias("genre"),
                     pl.col("clicks").fill_null(0)))
X = np.stack(emb["embedding"].to_list()).astype(np.float32)
print(f"run {run_id}: {X.shape[0]} items x {X.shape[1]} dims")

# %% [markdown]
# ## PCA (and t-SNE) of the item embeddings, the 10 most common first genres coloured

# %%
pca = PCA(n_components=2, random_state=0)
xy = {"PCA": pca.fit_transform(X)}
print("PCA explained variance:", np.round(pca.explained_variance_ratio_, 3))
if len(X) >= 50:
    xy["t-SNE"] = TSNE(n_components=2, perplexity=min(30.0, (len(X) - 1) / 3), init="pca",
                       random_state=0).fit_transform(X)
genres = emb["genre"].to_numpy()
common = [g for g, _ in zip(*np.unique(genres, return_counts=True))]
common = sorted(common, key=lambda g: -(genres == g).sum())[:10]
fig, axes = plt.subplots(1, len(xy), figsize=(6 * len(xy), 5), squeeze=False)
for ax, (name, pts) in zip(axes[0], xy.items()):
    other = ~np.isin(genres, common)
    ax.scatter(pts[other, 0], pts[other, 1], s=4, c="lightgrey", label="other")
    for g in common:
        sel = genres == g
        ax.scatter(pts[sel, 0], pts[sel, 1], s=6, label=g)
    ax.set(title=f"{name} of item embeddings (first genre)")
axes[0][0].legend(fontsize=7, markerscale=2)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Nearest neighbours (cosine) of the most clicked item

# %%
unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
anchor = int(np.argmax(emb["clicks"].to_numpy()))
sims = unit @ unit[anchor]
order = [i for i in np.argsort(-sims) if i != anchor][:5]
print("neighbours of", emb["title"][anchor])
print(emb[order].select("item_id", "title", "genre").with_columns(pl.Series("cosine", sims[order].round(3))))
plt.close("all")
