"""Spark engine: the same :class:`Recommender` in ``mapInPandas`` (pyspark is an optional extra,
imported only inside these functions)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from recsys_cl.candidates.generate import chunks
from recsys_cl.candidates.histories import UserBatch, UserHistories
from recsys_cl.candidates.scoring import Recommender
from recsys_cl.candidates.window import CandidatesError
from recsys_cl.config import CandidatesConfig
from recsys_cl.io_atomic import fsync_path

_EXECUTOR_CACHE: dict[tuple[str, ...], Recommender] = {}
"""One Recommender per executor Python process (model + index loaded once, reused across tasks)."""


def spark_session(master: str = "local[2]", app_name: str = "recsys_cl-candidates") -> Any:
    """The one place a SparkSession is created (Arrow on; for ``local[*]``: driver on 127.0.0.1, UI off)."""
    import os
    import sys

    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise CandidatesError("--engine spark needs pyspark: pip install -e '.[spark]' (and Java 17)") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
    )
    if master.startswith("local"):  # tests and single machines: loopback only, no UI
        builder = (builder.config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "4"))
    return builder.getOrCreate()


def _executor_recommender(model_file: str, index_file: str, k: int, max_extra: int,
                          model_version: str, index_id: str) -> Recommender:
    from pyspark import SparkFiles

    from recsys_cl.index.base import load_index
    from recsys_cl.train.checkpoint import load_model_dir

    key = (model_file, index_file, str(k), str(max_extra), model_version, index_id)
    if key not in _EXECUTOR_CACHE:
        torch.set_num_threads(1)  # one task per core
        model, spec, _ = load_model_dir(SparkFiles.get(model_file))
        index = load_index(SparkFiles.get(index_file))
        _EXECUTOR_CACHE[key] = Recommender(model, spec, index, k, max_extra, model_version, index_id)
    return _EXECUTOR_CACHE[key]


def _spark_recommend(frames: Iterator[Any], args: tuple[Any, ...]) -> Iterator[Any]:
    """mapInPandas body: rows (user_id, user_index, window, seen) -> candidate rows."""
    rec = _executor_recommender(*args)
    for pdf in frames:
        if len(pdf) == 0:
            continue
        seen = list(pdf["seen"])
        offsets = np.zeros(len(pdf) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seen], out=offsets[1:])
        batch = UserBatch(
            user_ids=pdf["user_id"].to_numpy(),
            user_index=pdf["user_index"].to_numpy(np.int64),
            windows=np.stack([np.asarray(w, dtype=np.int64) for w in pdf["window"]]),
            seen_offsets=offsets,
            seen_items=np.concatenate([np.asarray(s, dtype=np.int64) for s in seen]) if offsets[-1] else
            np.zeros(0, dtype=np.int64),
        )
        yield rec.recommend(batch).to_pandas()


def make_spark_runner(
    model_dir: Path, index_dir: Path, master: str, n_partitions: int = 4
) -> Callable[..., dict[str, float]]:
    """A ``spark_runner`` for :func:`generate_candidates`: users partitioned by id range, the model and
    index directories shipped with ``SparkContext.addFile`` and loaded once per executor process,
    ``mapInPandas``; executors write Parquet, sorted by (user_id, rank), into the temp partition.
    The runner returns ``{"engine_startup_s"}``: starting the session and shipping the files, which
    ``users_per_s`` leaves out."""

    def run(*, rec: Recommender, histories: UserHistories, users: np.ndarray, length: int,
            cfg: CandidatesConfig, out_dir: Path) -> dict[str, float]:
        import shutil

        import pandas as pd

        t0 = time.perf_counter()
        spark = spark_session(master)
        sc = spark.sparkContext
        sc.addFile(str(model_dir), recursive=True)
        sc.addFile(str(index_dir), recursive=True)
        startup_s = time.perf_counter() - t0
        id_type = "string" if users.dtype.kind in "UO" else "long"
        in_schema = f"user_id {id_type}, user_index long, window array<long>, seen array<long>"
        out_schema = f"user_id {id_type}, item_id long, rank int, score float, model_version string, index_id string"
        args = (model_dir.name, index_dir.name, cfg.k, cfg.max_extra_fetch, rec.model_version, rec.index_id)
        frames = []
        for s, e in chunks(len(users), cfg.chunk_size):  # driver-side inputs, chunk by chunk
            b = histories.batch(users[s:e], length)
            frames.append(pd.DataFrame({
                "user_id": b.user_ids, "user_index": b.user_index, "window": list(b.windows),
                "seen": [b.seen_items[b.seen_offsets[i]:b.seen_offsets[i + 1]] for i in range(len(b))],
            }))
        df = spark.createDataFrame(pd.concat(frames, ignore_index=True), schema=in_schema)
        out = (
            df.repartitionByRange(n_partitions, "user_id")
            .mapInPandas(lambda it: _spark_recommend(it, args), schema=out_schema)
            .repartitionByRange(n_partitions, "user_id")
            .sortWithinPartitions("user_id", "rank")
        )
        spark_dir = out_dir / "_spark"
        out.write.mode("overwrite").option("compression", "zstd").parquet(str(spark_dir))
        for i, f in enumerate(sorted(spark_dir.glob("part-*.parquet"))):
            dest = out_dir / f"part-{i:05d}.parquet"
            f.rename(dest)
            fsync_path(dest)
        shutil.rmtree(spark_dir)
        return {"engine_startup_s": startup_s}

    return run
