# %% [markdown]
# # Train a two-tower model and compare it with EASE, in ~40 lines
#
# A percent-format notebook (open it in Jupyter/VS Code with jupytext, or run it as a script):
# `python notebooks/01_train_and_evaluate.py`. It uses the library directly, the way the
# pipelines do, with a throwaway MLflow store so it leaves nothing behind.
# Run it from the repository root. Environment knobs (the test that runs this file sets them):
# RECSYS_CL_DATA, RECSYS_CL_EPOCHS.

# %%
import os
import tempfile
from pathlib import Path

import pipelines

from recsys_cl.baselines import EASE, score_fn_for
from recsys_cl.config import load_config
from recsys_cl.eval.protocol import evaluate, interaction_matrix
from recsys_cl.experiment import prepare, run_two_tower
from recsys_cl.tracking import mlflow_run

_scratch = tempfile.TemporaryDirectory(prefix="recsys_cl_nb01_")  # removed when the kernel exits
tmp = _scratch.name
cfg = load_config(Path(pipelines.__file__).parent / "configs" / "two_tower.yaml", overrides=[
    f"data.path={os.environ.get('RECSYS_CL_DATA', 'data/ml-latest-small')}",
    f"train.epochs={os.environ.get('RECSYS_CL_EPOCHS', '10')}",
    f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"train.checkpoint_dir={tmp}/ck",
    "tracking.registered_model_name=null",
])

# %% [markdown]
# One `prepare` call loads, validates and splits the data (leave-last-out by time) and builds the
# evaluation sets every model is scored on: full ranking, the user's history masked.

# %%
prep = prepare(cfg)
print(prep.protocol)
print(prep.split.sizes())

# %%
with mlflow_run(cfg.tracking, run_name="notebook") as run:
    summary = run_two_tower(cfg, run, prep)
print("two-tower test:", {k: round(v, 4) for k, v in summary["test_metrics"].items() if "@20" in k})

# %% [markdown]
# EASE (Steck 2019) on exactly the same split and protocol, scored from each user's history.

# %%
train = interaction_matrix(prep.split.train, prep.spec.users, prep.spec.catalogue_vocab)
ease = EASE(lam=50.0).fit(train)
metrics = evaluate(score_fn_for(ease, prep.test_set), prep.test_set)
print("EASE test:", {k: round(v, 4) for k, v in metrics.items() if "@20" in k})
