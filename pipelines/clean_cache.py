"""List, or with --yes delete, what training leaves on disk and no run has used for a while.

Examples:
    python -m pipelines.clean_cache                           # list what would go, with sizes; deletes nothing
    python -m pipelines.clean_cache --older-than-days 7 --yes
    python -m pipelines.clean_cache --set train.checkpoint_dir=/scratch/ckpt --summary-json runs/clean.json

Looks in the config's item_tower.cache_dir (frozen content features, by the time since a run last
read them) and train.checkpoint_dir (checkpoints of runs that did not finish, by the time since
their last epoch: after a changed config or click log no rerun resumes them), and at the temp files
killed writers left there. Never deletes a checkpoint a running training holds (its lock), a file
being written, a file newer than --older-than-days, or anything else in those folders
(recsys_cl.cleanup).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pipelines.cli import base_parser, check_output_file, configure_logging, load_config_or_exit, write_summary
from recsys_cl.cleanup import prune
from recsys_cl.config import RunConfig

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not days >= 0 or math.isinf(days):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return days


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.clean_cache", __doc__, DEFAULT_CONFIG,
                    "write what was (or would be) removed, and what was kept in use, to PATH",
                    "item_tower.cache_dir=runs/cache/content")
    p.add_argument("--older-than-days", type=_days, default=30.0, metavar="N",
                   help="only files no run has written (cache entries: read) for more than N days (default: 30)")
    p.add_argument("--yes", action="store_true", help="delete them (default: only list them)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_file(args.summary_json)
    cfg = load_config_or_exit(args, RunConfig, set_threads=False)
    report = prune(cfg.item_tower.cache_dir, cfg.train.checkpoint_dir, args.older_than_days, delete=args.yes)
    done = "removed" if args.yes else "would remove"
    print(f"{done} (unused for more than {args.older_than_days:g} days) from item_tower.cache_dir="
          f"{cfg.item_tower.cache_dir} and train.checkpoint_dir={cfg.train.checkpoint_dir}:")
    for f in report.removed:
        print(f"  {_size(f.size):>9s}  {f.age_days:6.1f} days  {f.kind:<16s}  {f.path}")
    for path, why in report.kept:
        print(f"  kept: {path} ({why})")
    print(f"{done}: {len(report.removed)} files, {_size(report.size)}"
          + ("" if args.yes or not report.removed else "; rerun with --yes to delete them"))
    summary = {
        "deleted": args.yes, "older_than_days": args.older_than_days,
        "removed": [{"path": str(f.path), "kind": f.kind, "bytes": f.size, "age_days": round(f.age_days, 2)}
                    for f in report.removed],
        "kept": [{"path": str(path), "why": why} for path, why in report.kept],
        "bytes": report.size,
    }
    write_summary(args.summary_json, summary)
    return summary


def _size(n: int) -> str:
    """``"812 B"``, ``"3.4 MB"``: sizes in bytes, as ``du -h`` would show them (1 MB = 2^20 bytes)."""
    if n < 1024:
        return f"{n} B"
    exponent = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024 ** exponent:.1f} {'KMG'[exponent - 1]}B"


if __name__ == "__main__":
    configure_logging()
    main(sys.argv[1:])
