# %% [markdown]
# # What `fit` fold-in costs as the catalogue grows (`candidates.fold_in: fit`)
#
# `fit` (`recsys_cl.towers.fold_in.fit_new_items`) fits the vectors of the R new items clicked in a
# window to those N clicks under the full-softmax training loss over all M items, every other item
# fixed. Only the R rows move, so the other items' share of each click's softmax normaliser is
# computed once (`fixed_log_partition`, one pass over C x M for the C distinct clickers) and each of
# the 100 steps scores only C x R. The reference is the same fit rescoring all M items at every step
# (`reuse_fixed=False`), timed in the same run, on the same vectors.
#
# Synthetic, seeded: M unit item vectors around 50 cluster centres, D = 64; N clicks by N / 5 users near a
# cluster, 10% of them on R new items (zero vectors: no content), the rest on trained items of the
# clicker's cluster. 2 threads by default (the machine this project targets).
#
# Run from the repository root: `python notebooks/07_fold_in_fit_cost.py`. Knobs: RECSYS_CL_FIT_SIZES
# (`items x clicks`, comma separated), RECSYS_CL_FIT_FULL_MAX (up to this items x clicks the reference
# runs in full and the two fits are compared; above, its per-step time is measured on
# RECSYS_CL_FIT_FULL_STEPS steps and multiplied out, and the table says so), RECSYS_CL_THREADS.
# Measured results are in docs/content_and_cold_start.md.

# %%
import os
import time

import torch

from recsys_cl.towers.fold_in import fit_new_items

torch.set_num_threads(int(os.environ.get("RECSYS_CL_THREADS", "2")))
sizes = [tuple(int(x) for x in s.split("x")) for s in os.environ.get(
    "RECSYS_CL_FIT_SIZES", "10000x1000,10000x20000,100000x20000,1000000x20000").split(",")]
full_steps = int(os.environ.get("RECSYS_CL_FIT_FULL_STEPS", "5"))
full_max = float(os.environ.get("RECSYS_CL_FIT_FULL_MAX", "2e8"))  # items x clicks the reference runs in full
D, STEPS, CLUSTERS = 64, 100, 50


def make(m: int, n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLUSTERS, D, generator=g), dim=1)
    item_cluster = torch.randint(0, CLUSTERS, (m,), generator=g)
    items = torch.nn.functional.normalize(centres[item_cluster] + 0.5 * torch.randn(m, D, generator=g) / D**0.5, dim=1)
    n_users = max(n // 5, 1)
    user_cluster = torch.randint(0, CLUSTERS, (n_users,), generator=g)
    users = torch.nn.functional.normalize(centres[user_cluster] + 0.5 * torch.randn(n_users, D, generator=g) / D**0.5,
                                          dim=1)
    r = max(m // 100, 1)  # new items: the last r rows, no content yet
    rows = torch.arange(m - r, m)
    items[rows] = 0.0
    click_users = torch.randint(0, n_users, (n,), generator=g)
    on_new = torch.rand(n, generator=g) < 0.1
    by_cluster = [torch.nonzero(item_cluster[: m - r] == c).squeeze(1) for c in range(CLUSTERS)]
    pick = torch.rand(n, generator=g)
    click_items = torch.empty(n, dtype=torch.long)
    for c in range(CLUSTERS):  # warm clicks: an item of the clicker's cluster
        sel = (~on_new) & (user_cluster[click_users] == c)
        pool = by_cluster[c] if len(by_cluster[c]) else torch.arange(m - r)
        click_items[sel] = pool[(pick[sel] * len(pool)).long()]
    click_items[on_new] = rows[(pick[on_new] * r).long()]
    return items, rows, users, click_items, click_users


def timed(**kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fit_new_items(**kwargs)
    return out, time.perf_counter() - t0


warm = make(500, 100)  # the first torch calls of a process pay one-off set-up costs: not timed
fit_new_items(*warm[:5], temperature=0.1, steps=2)
fit_new_items(*warm[:5], temperature=0.1, steps=2, reuse_fixed=False)
print(f"{torch.get_num_threads()} threads, D={D}, {STEPS} steps")
print("| items M | clicks N | new items R | fit (s) | reference: all M rescored each step (s) | speed-up "
      "| max abs difference of the fitted vectors |\n|---|---|---|---|---|---|---|")
for m, n in sizes:
    items, rows, users, ci, cu = make(m, n)
    args = dict(item_vectors=items, rows=rows, user_vectors=users, click_items=ci, click_users=cu,
                temperature=0.1)
    fast, fast_s = timed(**args, steps=STEPS)
    if m * n <= full_max:  # the reference in full, and the two fits compared
        ref, ref_s = timed(**args, steps=STEPS, reuse_fixed=False)
        diff, how = f"{float((fast - ref).abs().max()):.1e}", ""
    else:  # its steps cost the same each: time a few, multiply out
        _, few_s = timed(**args, steps=full_steps, reuse_fixed=False)
        ref_s, diff = few_s * STEPS / full_steps, "not compared"
        how = f" ({full_steps} steps timed, x {STEPS / full_steps:.1f})"
    print(f"| {m:,d} | {n:,d} | {len(rows):,d} | {fast_s:.2f} | {ref_s:.1f}{how} | {ref_s / fast_s:.0f}x | {diff} |")
