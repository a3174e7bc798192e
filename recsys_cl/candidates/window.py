"""Run dates and the active-user window (UTC).

The run date D is a UTC calendar day. Only clicks with ``timestamp < (D + 1 day) 00:00 UTC`` are
read (nothing after the run date); a user is *active* when they clicked at least once in the
``lookback_days`` days ending on D, i.e. in ``[D - lookback_days + 1, D + 1)`` 00:00 UTC.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import numpy as np
import polars as pl

log = logging.getLogger(__name__)
DAY = 86400
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CandidatesError(ValueError):
    """Bad input to candidate generation (date, window, data); the message says what and how to fix it."""


def parse_run_date(text: str, flag: str = "--date") -> date:
    """``YYYY-MM-DD`` -> date; anything else raises :class:`CandidatesError` naming ``flag`` and the format."""
    try:
        if not _DATE_RE.match(text):
            raise ValueError("wrong shape")
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise CandidatesError(
            f"{flag} {text!r} is not a valid calendar date; expected YYYY-MM-DD (e.g. 2024-05-01)"
        ) from None


def day_start(d: date) -> int:
    """Unix seconds of ``d`` 00:00 UTC."""
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp())


def _shift(d: date, days: int) -> date:
    try:
        return d + timedelta(days=days)
    except OverflowError:
        raise CandidatesError(
            f"run date {d} shifted by {days} days leaves the calendar (years 1..9999); pick a real run date"
        ) from None


@dataclass(frozen=True)
class Window:
    """The active-user window of a run date: ``[start, end)`` in unix seconds (UTC)."""

    run_date: date
    lookback_days: int

    @property
    def start(self) -> int:
        return day_start(_shift(self.run_date, 1 - self.lookback_days))

    @property
    def end(self) -> int:
        """End of the run date (exclusive): no click at or after this is ever read."""
        return day_start(_shift(self.run_date, 1))

    def __str__(self) -> str:
        return f"[{_shift(self.run_date, 1 - self.lookback_days)} 00:00, {_shift(self.run_date, 1)} 00:00) UTC"


def data_span(clicks: pl.DataFrame) -> str:
    """``first .. last`` click dates (UTC) of a non-empty click log."""
    ts = clicks["timestamp"]
    first, last = (datetime.fromtimestamp(int(v), tz=timezone.utc).date()  # type: ignore[arg-type]
                   for v in (ts.min(), ts.max()))
    return f"{first} .. {last}"


def trained_after(train_clicks_until: int | None, run_date: date) -> tuple[str | None, bool]:
    """``(date of the model's last training click, whether it is after run_date)``; ``(None, False)``
    for a model saved before it was recorded. After the run date, the model has learned from clicks
    the run itself may not read: fine for a look at old dates, a leak in a backfill that is scored
    against those days' clicks."""
    if train_clicks_until is None:
        return None, False
    last = datetime.fromtimestamp(int(train_clicks_until), tz=timezone.utc).date()
    if last > run_date:
        log.warning(
            "the model was trained on clicks up to %s, after the run date %s: its candidates use what users "
            "did after that date, so scoring them against that date's clicks would leak; for a backfill, "
            "serve a model trained on clicks up to the run date", last, run_date)
    return last.isoformat(), last > run_date


def clicks_up_to(clicks: pl.DataFrame, run_date: date) -> pl.DataFrame:
    """Clicks with timestamp before the end of ``run_date`` (UTC): all history a run may read.

    Raises:
        CandidatesError: the log has clicks, but none on or before ``run_date``.
    """
    history = clicks.filter(pl.col("timestamp") < Window(run_date, 1).end)
    if history.height == 0 and clicks.height:
        raise CandidatesError(
            f"no clicks on or before the run date {run_date}: the data spans {data_span(clicks)}; "
            "pick --date within it"
        )
    return history


def active_users(clicks: pl.DataFrame, run_date: date, lookback_days: int) -> np.ndarray:
    """(U,) sorted ids of users with >= 1 click in the window; raises when there are none."""
    w = Window(run_date, lookback_days)
    users = (
        clicks.filter((pl.col("timestamp") >= w.start) & (pl.col("timestamp") < w.end))
        .get_column("user_id")
        .unique()
        .sort()
        .to_numpy()
    )
    if len(users) == 0:
        if clicks.height == 0:
            raise CandidatesError(f"no clicks at all: the click log is empty (window {w})")
        raise CandidatesError(
            f"no clicks in the window {w} (run date {run_date}, lookback {lookback_days} days); the data "
            f"spans {data_span(clicks)}: pick --date within it or raise candidates.lookback_days"
        )
    return users
