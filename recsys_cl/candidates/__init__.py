"""Nightly batch candidate generation: active users -> user tower -> index top K unseen (exact: seen masked;
ANN: top K + |seen|, seen dropped) -> K per user.

The run date D is a UTC calendar day. Only clicks with ``timestamp < (D + 1 day) 00:00 UTC`` are
read (nothing after the run date); a user is *active* when they clicked at least once in the
``lookback_days`` days ending on D, i.e. in ``[D - lookback_days + 1, D + 1)`` 00:00 UTC. Their
history (the user tower's input window and the seen set that is filtered out) is all of their
clicks up to the end of D.

Users are processed in chunks of ``chunk_size`` (memory is bounded by the chunk, not the user
count); each chunk becomes one Parquet part file of rows
``(user_id, item_id, rank 1..K, score float32, model_version, index_id)`` sorted by (user_id, rank).

Modules (every public name is re-exported here, so ``from recsys_cl.candidates import X`` works):

- :mod:`~recsys_cl.candidates.window`: run dates, the active-user window, :class:`CandidatesError`
- :mod:`~recsys_cl.candidates.histories`: per-user history windows and seen sets (:class:`UserHistories`;
  :func:`batch_from_lists` for a serving request's lists)
- :mod:`~recsys_cl.candidates.scoring`: :func:`topk_unseen` and the :class:`Recommender`
- :mod:`~recsys_cl.candidates.generate`: the local chunk loop and publishing (:func:`generate_candidates`)
- :mod:`~recsys_cl.candidates.model`: load the model, open and check an index, or build one in memory
- :mod:`~recsys_cl.candidates.spark`: the Spark engine (pyspark imported lazily)
- :mod:`~recsys_cl.candidates.job`: :func:`run`, the one call the pipelines make
- :mod:`~recsys_cl.candidates.health`: health checks against the previous night

Letters: U users in a chunk, L history length, D embedding dim, K candidates, M items.

Example::

    loaded = load_model("models:/recsys_cl_two_tower@champion", tracking_cfg)
    result = run(CandidatesConfig(), clicks, loaded, parse_run_date("2024-05-01"))
    result.partition  # runs/candidates/dt=2024-05-01
"""

from recsys_cl.candidates.generate import (
    CandidatesResult,
    RunWindow,
    chunks,
    generate_candidates,
    partition_stats,
    read_partition,
    read_window,
    sampled_recall,
)
from recsys_cl.candidates.health import (
    HealthCheckError,
    health_check,
    overlap_at_k,
    previous_partition,
)
from recsys_cl.candidates.histories import UserBatch, UserHistories, batch_from_lists, check_clicks
from recsys_cl.candidates.job import run
from recsys_cl.candidates.model import (
    Loaded,
    build_index_for_loaded,
    build_index_in_memory,
    check_saved_index,
    fold_in_for_run,
    fold_in_new_clicks,
    load_model,
    model_uri_for_run,
    open_index,
)
from recsys_cl.candidates.scoring import OUTPUT_SCHEMA_FIELDS, Recommender, topk_unseen
from recsys_cl.candidates.spark import make_spark_runner, spark_session
from recsys_cl.candidates.window import (
    DAY,
    CandidatesError,
    Window,
    active_users,
    clicks_up_to,
    day_start,
    parse_run_date,
)

__all__ = [
    "DAY",
    "OUTPUT_SCHEMA_FIELDS",
    "CandidatesError",
    "CandidatesResult",
    "HealthCheckError",
    "Loaded",
    "Recommender",
    "RunWindow",
    "UserBatch",
    "UserHistories",
    "Window",
    "active_users",
    "batch_from_lists",
    "build_index_for_loaded",
    "build_index_in_memory",
    "check_clicks",
    "check_saved_index",
    "chunks",
    "clicks_up_to",
    "day_start",
    "fold_in_for_run",
    "fold_in_new_clicks",
    "generate_candidates",
    "health_check",
    "load_model",
    "make_spark_runner",
    "model_uri_for_run",
    "open_index",
    "overlap_at_k",
    "parse_run_date",
    "partition_stats",
    "previous_partition",
    "read_partition",
    "read_window",
    "run",
    "sampled_recall",
    "spark_session",
    "topk_unseen",
]
