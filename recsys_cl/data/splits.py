"""Time-respecting train / validation / test splits of a click log.

Clicks are ordered by ``(timestamp, row_order)``: equal timestamps are broken by file order, so
every split is deterministic. Both protocols guarantee that each target's history (val: train;
test: train + val, see :meth:`Split.test_history`) holds only clicks strictly before the target.

* ``leave_last_out``: per user, the last click is the test target, the second-last the validation
  target, the rest is train. Users with fewer than 3 clicks stay wholly in train (no targets).
* ``temporal``: global cutoffs ``t_val`` / ``t_test`` at timestamp quantiles. train = ``ts < t_val``,
  val = ``t_val <= ts < t_test``, test = ``ts >= t_test``. Val and test rows are kept only for
  users with at least one train click (a history-based model cannot score the others).
* ``cold_start``: the temporal cutoffs and frames, but the *targets* are only val / test clicks on
  cold items: items with no click before ``t_val`` (``Split.cold_items``). The val frame keeps every
  val-period click, so test histories are complete; :meth:`Split.val_targets` and
  :meth:`Split.test_targets` apply the cold filter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

import polars as pl

from recsys_cl.config import SplitConfig
from recsys_cl.data.errors import DataError

_ORDER = ("user_id", "timestamp", "row_order")


@dataclass(frozen=True)
class Split:
    """Three disjoint click frames with the columns of ``ClickLog.clicks``, each sorted by
    (user_id, timestamp, row_order).

    Attributes:
        train: training clicks; the history for validation targets.
        val: validation targets.
        test: test targets; their history is :meth:`test_history`.
        protocol: how the split was made, logged with every metric, e.g.
            ``leave_last_out(ties=row_order)``.
    """

    train: pl.DataFrame
    val: pl.DataFrame
    test: pl.DataFrame
    protocol: str
    cold_items: pl.Series | None = None
    """``cold_start`` only: ids of the items with no training click (the ranked set's clicked part)."""
    train_end: int | None = None
    """``temporal`` / ``cold_start``: the cutoff ``t_val`` (every training click is before it), the
    time as of which item content that changes over time (tags) is read; None for leave_last_out."""

    def val_targets(self) -> pl.DataFrame:
        """The validation targets: ``val``, restricted to cold items for ``cold_start``."""
        return self._targets(self.val)

    def test_targets(self) -> pl.DataFrame:
        """The test targets: ``test``, restricted to cold items for ``cold_start``."""
        return self._targets(self.test)

    def _targets(self, frame: pl.DataFrame) -> pl.DataFrame:
        if self.cold_items is None:
            return frame
        return frame.filter(pl.col("item_id").is_in(self.cold_items.implode()))

    def test_history(self) -> pl.DataFrame:
        """Train + val clicks: everything a test target's user did before the test targets."""
        return pl.concat([self.train, self.val]).sort(_ORDER)

    def sizes(self) -> dict[str, int]:
        """Row and user counts per part, for logging."""
        out: dict[str, int] = {}
        for name, frame in (("train", self.train), ("val", self.val_targets()), ("test", self.test_targets())):
            out[f"{name}_clicks"] = frame.height
            out[f"{name}_users"] = frame["user_id"].n_unique()
        if self.cold_items is not None:
            out["cold_items_clicked"] = len(self.cold_items)
        return out


def split_clicks(clicks: pl.DataFrame, cfg: SplitConfig) -> Split:
    """Split ``clicks`` into train / val / test by ``cfg.kind``.

    Args:
        clicks: the contract frame of ``ClickLog.clicks`` (``user_id``, ``item_id``, ``timestamp``,
            ``row_order``, ...). Without ``row_order`` the frame's own order breaks ties.
        cfg: the split configuration.

    Raises:
        DataError: the log is empty or the split leaves no validation or test targets.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in clicks.columns]
    if missing:
        raise DataError(f"split_clicks: clicks lack column(s) {missing} (found {clicks.columns}); "
                        "load them with load_click_log")
    if clicks.height == 0:
        raise DataError("split_clicks: the click log is empty; nothing to split")
    if "row_order" not in clicks.columns:
        clicks = clicks.with_row_index("row_order").with_columns(pl.col("row_order").cast(pl.Int64))
    clicks = clicks.sort(_ORDER)
    if cfg.kind == "leave_last_out":
        split = _leave_last_out(clicks)
    elif cfg.kind == "temporal":
        split = _temporal(clicks, cfg.val_quantile, cfg.test_quantile)
    elif cfg.kind == "cold_start":
        split = _cold_start(clicks, cfg.val_quantile, cfg.test_quantile)
    else:  # SplitConfig validates kind; keep a clear error for hand-built configs
        raise DataError(f"split.kind must be leave_last_out, temporal or cold_start, got {cfg.kind!r}")
    for name, frame in (("validation", split.val_targets()), ("test", split.test_targets())):
        if frame.height == 0:
            raise DataError(
                f"split {split.protocol} left no {name} targets ({clicks.height} clicks, "
                f"{clicks['user_id'].n_unique()} users); leave_last_out needs users with >= 3 clicks, "
                "temporal needs clicks after the cutoffs by users who also clicked before the first cutoff, "
                "cold_start needs clicks after the cutoffs on items never clicked before them: use more data or "
                "change split.*"
            )
    return split


def _leave_last_out(clicks: pl.DataFrame) -> Split:
    """``clicks`` sorted by (user, timestamp, row_order)."""
    n = pl.len().over("user_id")
    from_end = n - 1 - pl.int_range(pl.len()).over("user_id")  # 0 = the user's last click
    tagged = clicks.with_columns(
        pl.when(n < 3).then(2).otherwise(pl.min_horizontal(from_end, 2)).alias("_part")
    )
    parts = tagged.partition_by("_part", as_dict=True, include_key=False)
    empty = clicks.clear()
    return Split(
        train=parts.get((2,), empty),
        val=parts.get((1,), empty),
        test=parts.get((0,), empty),
        protocol="leave_last_out(ties=row_order)",
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cold_start(clicks: pl.DataFrame, val_q: float, test_q: float) -> Split:
    """Temporal frames; targets restricted to items with no click before the training cutoff."""
    base = _temporal(clicks, val_q, test_q)
    warm = base.train.select(pl.col("item_id").unique())
    later = pl.concat([base.val.select("item_id"), base.test.select("item_id")]).unique()
    cold = later.join(warm, on="item_id", how="anti")["item_id"].sort()
    protocol = base.protocol.replace("temporal(", "cold_start(", 1)
    return dataclasses.replace(base, protocol=protocol, cold_items=cold)


def _temporal(clicks: pl.DataFrame, val_q: float, test_q: float) -> Split:
    """``clicks`` sorted by (user, timestamp, row_order)."""
    ts = clicks["timestamp"]
    t_val = int(ts.quantile(val_q, interpolation="lower"))  # type: ignore[arg-type]
    t_test = int(ts.quantile(test_q, interpolation="lower"))  # type: ignore[arg-type]
    train = clicks.filter(pl.col("timestamp") < t_val)
    known = train.select(pl.col("user_id").unique())
    val = clicks.filter(pl.col("timestamp").is_between(t_val, t_test, closed="left"))
    val = val.join(known, on="user_id", how="semi", maintain_order="left")
    test = clicks.filter(pl.col("timestamp") >= t_test)
    test = test.join(known, on="user_id", how="semi", maintain_order="left")
    protocol = f"temporal(val>={_iso(t_val)},test>={_iso(t_test)},q={val_q:g}/{test_q:g})"
    return Split(train=train, val=val, test=test, protocol=protocol, train_end=t_val)
