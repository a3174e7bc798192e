"""Spark engine: the same :class:`Recommender` in ``mapInArrow`` (pyspark is an optional extra,
imported only inside these functions)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from recsys_cl.candidates.generate import chunks
from recsys_cl.candidates.histories import UserBatch, UserHistories
from recsys_cl.candidates.scoring import Recommender
from recsys_cl.candidates.window import CandidatesError
from recsys_cl.config import CandidatesConfig
from recsys_cl.io_atomic import SLEEP_HOOK_ENV, fsync_path

log = logging.getLogger(__name__)
_EXECUTOR_CACHE: dict[tuple[str, ...], Recommender] = {}
"""One Recommender per executor Python process (model + index loaded once, reused across tasks)."""


def under_spark_submit() -> bool:
    """Whether this Python process was started by ``spark-submit`` (or the pyspark shell): its JVM,
    master and ``--conf`` exist already."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(master: str = "local[2]", app_name: str = "recsys_cl-candidates") -> Any:
    """The one place a SparkSession is created (Arrow on; for ``local[*]``: driver on 127.0.0.1, UI off).

    Under ``spark-submit``, its ``--master``, ``--name`` and ``--conf`` hold and ``master`` /
    ``app_name`` are not applied (setting them would silently move a ``--master yarn`` job onto the
    driver); only what the engine needs (Arrow, Python worker reuse) is added.

    When this process starts Spark's JVM (no JVM yet, not under ``spark-submit``), the JVM gets a
    session of its own: a SIGTERM or Ctrl-C sent to the job's process group (a scheduler, a terminal)
    then reaches Python only, which stops Spark itself (:func:`stop_spark`), instead of killing the JVM
    mid-job (stack traces on the console, and a py4j connection that MLflow's ``end_run`` then trips
    on). The JVM still exits with this process: it ends when its stdin, a pipe from here, closes."""
    import sys

    try:
        from pyspark import SparkConf, SparkContext
        from pyspark.java_gateway import launch_gateway
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise CandidatesError("--engine spark needs pyspark: pip install -e '.[spark]' (and Java 17)") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = (
        SparkConf()
        .set("spark.sql.execution.arrow.pyspark.enabled", "true")
        .set("spark.python.worker.reuse", "true")
    )
    if under_spark_submit():
        session = SparkSession.builder.config(conf=conf).getOrCreate()
        if session.sparkContext.master != master:
            log.info("under spark-submit: master %s from spark-submit (candidates.spark_master %s applies "
                     "when the job starts Spark itself)", session.sparkContext.master, master)
        return session
    conf = conf.setMaster(master).setAppName(app_name)
    if master.startswith("local"):  # tests and single machines: loopback only, no UI
        conf = (conf.set("spark.driver.bindAddress", "127.0.0.1")
                .set("spark.driver.host", "127.0.0.1")
                .set("spark.ui.enabled", "false")
                .set("spark.sql.shuffle.partitions", "4"))
    if SparkContext._gateway is None:
        # what getOrCreate would launch (spark-submit with the same --conf), in a session of its own
        SparkContext(conf=conf, gateway=launch_gateway(conf, popen_kwargs={"start_new_session": True}))
    return SparkSession.builder.config(conf=conf).getOrCreate()


def stop_spark(timeout_s: float = 30.0) -> None:
    """Cancel the active SparkContext's jobs and stop it, quietly: for a run that is being abandoned
    (a signal, an error). Runs in a thread of its own, since a signal may have interrupted the main
    thread mid-call, leaving its py4j connection waiting for that call's answer. Spark's own logging
    is turned off first: the cancelled tasks' errors are the expected consequence, not news. Never
    raises; gives up after ``timeout_s`` (the JVM then ends with this process)."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        return

    def stop() -> None:
        try:
            with warnings.catch_warnings():  # "Unable to cleanly shutdown Spark JVM process" if it is gone
                warnings.simplefilter("ignore")
                try:
                    sc.setLogLevel("OFF")
                    sc.cancelAllJobs()
                finally:
                    sc.stop()
        except Exception as e:  # a JVM already gone: nothing left to stop
            log.debug("stopping Spark: %s: %s", type(e).__name__, e)

    t = threading.Thread(target=stop, name="stop-spark", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        log.warning("Spark did not stop within %.0f s; its JVM ends with this process", timeout_s)


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


def _list_column(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) starting at 0, values) of an Arrow list column, chunked or sliced (a sliced
    array keeps its parent's offsets: they are rebased here)."""
    import pyarrow as pa

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _spark_recommend(batches: Iterator[Any], args: tuple[Any, ...]) -> Iterator[Any]:
    """mapInArrow body: record batches (user_id, user_index, window, seen) -> candidate record batches,
    in the input's row order with rank ascending (what :meth:`Recommender.recommend` returns)."""
    rec = _executor_recommender(*args)
    for rb in batches:
        if rb.num_rows == 0:
            continue
        _, windows = _list_column(rb.column("window"))
        seen_offsets, seen_items = _list_column(rb.column("seen"))
        batch = UserBatch(
            user_ids=rb.column("user_id").to_numpy(zero_copy_only=False),
            user_index=rb.column("user_index").to_numpy().astype(np.int64, copy=False),
            windows=windows.reshape(rb.num_rows, -1),
            seen_offsets=seen_offsets,
            seen_items=seen_items,
        )
        yield from rec.recommend(batch).to_batches()
        delay = os.environ.get(SLEEP_HOOK_ENV)
        if delay:  # test hook: a window in which a test signals the job while Spark runs
            time.sleep(float(delay))


def _arrow_inputs(histories: UserHistories, users: np.ndarray, length: int, chunk_size: int) -> Any:
    """Every user's scoring inputs as one Arrow table, built chunk by chunk from CSR arrays (no
    per-user Python objects): columns user_id, user_index, window (list of ``length``), seen (list)."""
    import pyarrow as pa

    tables = []
    for s, e in chunks(len(users), chunk_size):
        b = histories.batch(users[s:e], length)
        n = len(b)
        win_offsets = pa.array(np.arange(n + 1, dtype=np.int32) * length)
        tables.append(pa.table({
            "user_id": pa.array(b.user_ids),
            "user_index": pa.array(b.user_index.astype(np.int64)),
            "window": pa.ListArray.from_arrays(win_offsets, pa.array(b.windows.reshape(-1).astype(np.int64))),
            "seen": pa.ListArray.from_arrays(pa.array(b.seen_offsets.astype(np.int32)),
                                             pa.array(b.seen_items.astype(np.int64))),
        }))
    return pa.concat_tables(tables)


def make_spark_runner(
    model_dir: Path, index_dir: Path, master: str, n_partitions: int | None = None
) -> Callable[..., dict[str, Any]]:
    """A ``spark_runner`` for :func:`generate_candidates`: users partitioned by id range into
    ``n_partitions`` (None: the session's default parallelism, i.e. its executor cores), the model and
    index directories shipped with ``SparkContext.addFile`` and loaded once per executor process,
    ``mapInArrow``; executors write Parquet, sorted by (user_id, rank), into the temp partition.
    The runner returns ``{"timings": {"engine_startup_s"}, "info": {"master", "partitions",
    "default_parallelism", "spark_submit"}}``: starting the session and shipping the files, which
    ``users_per_s`` leaves out, and where the job ran."""

    def run(*, rec: Recommender, histories: UserHistories, users: np.ndarray, length: int,
            cfg: CandidatesConfig, out_dir: Path) -> dict[str, Any]:
        try:
            return _run(rec=rec, histories=histories, users=users, length=length, cfg=cfg, out_dir=out_dir)
        except BaseException:  # SIGTERM's SystemExit, Ctrl-C, an error: stop Spark before the temp
            stop_spark()       # partition is removed, so that no task writes into it afterwards
            raise

    def _run(*, rec: Recommender, histories: UserHistories, users: np.ndarray, length: int,
             cfg: CandidatesConfig, out_dir: Path) -> dict[str, Any]:
        import shutil

        t0 = time.perf_counter()
        main_thread = threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if main_thread else None
        spark = spark_session(master)
        if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:
            # pyspark's Ctrl-C handler cancels jobs through the main thread's py4j connection, busy
            # with the running job; the caller's handler (a pipeline's: SystemExit(130)) leads to
            # stop_spark below instead
            signal.signal(signal.SIGINT, sigint)
        sc = spark.sparkContext
        sc.addFile(str(model_dir), recursive=True)
        sc.addFile(str(index_dir), recursive=True)
        partitions = n_partitions or max(int(sc.defaultParallelism), 1)
        startup_s = time.perf_counter() - t0
        id_type = "string" if users.dtype.kind in "UO" else "long"
        item_type = "string" if rec.spec.items.ids.dtype.kind in "UO" else "long"  # as Recommender.recommend
        # windows and seen sets are item-vocab indices whatever the item ids' type
        in_schema = f"user_id {id_type}, user_index long, window array<long>, seen array<long>"
        out_schema = (f"user_id {id_type}, item_id {item_type}, rank int, score float, model_version string, "
                      "index_id string")
        args = (model_dir.name, index_dir.name, cfg.k, cfg.max_extra_fetch, rec.model_version, rec.index_id)
        df = spark.createDataFrame(_arrow_inputs(histories, users, length, cfg.chunk_size), schema=in_schema)
        # Executors get users in id ranges, sorted; recommend keeps row order with rank ascending, and
        # mapInArrow keeps each partition's order: part i is already sorted by (user_id, rank) and
        # holds the i-th id range. Range-shuffling and sorting the 100x larger output instead made the
        # whole job ~1.4x slower (30,500 users, docs/candidates.md#spark).
        out = (
            df.repartitionByRange(partitions, "user_id")
            .sortWithinPartitions("user_id")
            .mapInArrow(lambda it: _spark_recommend(it, args), schema=out_schema)
        )
        spark_dir = out_dir / "_spark"
        out.write.mode("overwrite").option("compression", "zstd").parquet(str(spark_dir))
        for i, f in enumerate(sorted(spark_dir.glob("part-*.parquet"))):
            dest = out_dir / f"part-{i:05d}.parquet"
            f.rename(dest)
            fsync_path(dest)
        shutil.rmtree(spark_dir)
        return {"timings": {"engine_startup_s": startup_s},
                "info": {"master": sc.master, "partitions": partitions,
                         "default_parallelism": int(sc.defaultParallelism), "spark_submit": under_spark_submit()}}

    return run
