# %% [markdown]
# # Explore the click log: users, items, activity over time, the popularity long tail
#
# Percent-format notebook (open with Jupyter + jupytext or VS Code, or run as a script from the
# repository root: `python notebooks/02_explore_click_log.py`). Environment knobs (the test sets
# them): RECSYS_CL_DATA (default `data/ml-latest-small`).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from recsys_cl.config import load_config
from recsys_cl.data.io import load_click_log

cfg = load_config(None, overrides=[f"data.path={os.environ.get('RECSYS_CL_DATA', 'data/ml-latest-small')}"])
log = load_click_log(cfg.data)
clicks, items = log.clicks, log.items
print(log.source)
print(f"{clicks.height:,} clicks, {clicks['user_id'].n_unique():,} users, "
      f"{clicks['item_id'].n_unique():,} clicked items of {items.height:,} in the item table")

# %% [markdown]
# ## Users: how many clicks each (a long right tail: a few users rate hundreds of movies)

# %%
per_user = clicks.group_by("user_id").len()["len"].to_numpy()
print("clicks per user: min %d, median %.0f, mean %.1f, max %d"
      % (per_user.min(), np.median(per_user), per_user.mean(), per_user.max()))
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(per_user, bins=min(50, max(5, len(per_user) // 2)), log=True)
ax.set(xlabel="clicks per user", ylabel="users (log)", title="User activity")
plt.show()

# %% [markdown]
# ## Activity over time: clicks per month

# %%
by_month = (
    clicks.with_columns(pl.from_epoch("timestamp", time_unit="s").dt.truncate("1mo").alias("month"))
    .group_by("month").len().sort("month")
)
first, last = pl.from_epoch(clicks["timestamp"], time_unit="s").dt.date().min(), \
    pl.from_epoch(clicks["timestamp"], time_unit="s").dt.date().max()
print(f"{first} .. {last} ({by_month.height} months with clicks)")
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(by_month["month"].to_list(), by_month["len"].to_list(), marker=".")
ax.set(ylabel="clicks", title="Clicks per month")
fig.autofmt_xdate()
plt.show()

# %% [markdown]
# ## Popularity long tail: a small head of items takes most of the clicks. This is why the loss
# corrects for sampling bias (logQ): popular items are in-batch negatives far more often.

# %%
counts = np.sort(clicks.group_by("item_id").len()["len"].to_numpy())[::-1]
share = np.cumsum(counts) / counts.sum()
head = max(1, int(np.ceil(0.1 * len(counts))))
print(f"the top 10% of items ({head}) get {share[head - 1]:.0%} of the clicks; "
      f"{(counts == 1).sum()} items are clicked once")
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
a.loglog(np.arange(1, len(counts) + 1), counts, marker=".", linestyle="none")
a.set(xlabel="item rank", ylabel="clicks", title="Item popularity (log-log)")
b.plot(np.arange(1, len(counts) + 1) / len(counts), share)
b.set(xlabel="share of items (most popular first)", ylabel="share of clicks", title="Cumulative share")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Most clicked items and genres

# %%
top = (clicks.group_by("item_id").len().sort("len", descending=True).head(10)
       .join(items.select("item_id", "title"), on="item_id", how="left"))
print(top)
if "genres" in items.columns:
    genres = (clicks.join(items.select("item_id", "genres"), on="item_id").explode("genres")
              .group_by("genres").len().sort("len", descending=True))
    print(genres.head(10))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(genres["genres"].to_list()[:15][::-1], genres["len"].to_list()[:15][::-1])
    ax.set(xlabel="clicks", title="Clicks by genre")
    fig.tight_layout()
    plt.show()
plt.close("all")
