"""Command-line plumbing shared by the pretraining pipelines (``pretrain_simclr``, ``pretrain_simcse``).

Both take ``--config``, repeatable ``--set section.key=value`` and ``--summary-json PATH``, turn a
bad config into ``SystemExit("config error: ...")`` and pin torch's threads to ``train.num_threads``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from recsys_cl.config import ConfigError, load_config

T = TypeVar("T")


def parse_args(argv: list[str] | None, prog: str, doc: str | None, default_config: Path) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(default_config), help="YAML config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--summary-json", metavar="PATH",
                   help="write {run_id, encoder_uri, metrics, baseline_metrics, ...} to PATH")
    return p.parse_args(argv)


def load_config_or_exit(args: argparse.Namespace, cls: type[T]) -> T:
    """The validated config of ``--config`` + ``--set``; sets torch's threads to ``train.num_threads`` (0 = keep)."""
    try:
        cfg = load_config(args.config, cls, overrides=args.set)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    threads = cfg.train.num_threads  # type: ignore[attr-defined]
    if threads:
        torch.set_num_threads(threads)
    return cfg


def write_summary(path: str | None, summary: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2))
