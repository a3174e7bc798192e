"""Write a semi-synthetic click log over Fashion-MNIST product images (for the image tower and cold start).

Semi-synthetic: real product images, simulated users and clicks; not a real click log. Items are
Fashion-MNIST training photos (Zalando Research, Xiao et al. 2017, MIT licence); users with tastes
over kinds of product, their clicks and all timestamps are simulated. The last --cold-fraction of
items are released after the 0.85 quantile of click times, so a temporal split leaves them with no
training clicks but with test clicks. See recsys_cl/data/fashion_clicks.py for the generative story.

Examples:
    python -m pipelines.make_fashion_clicks                          # defaults -> runs/fashion-clicks
    python -m pipelines.make_fashion_clicks --num-users 500 --num-items 1000 --seed 1 --out runs/fc-small
    python -m pipelines.make_fashion_clicks --fashion-mnist /data/fashion-mnist --cold-fraction 0.3

Writes OUT/clicks.parquet (user_id, item_id, timestamp), OUT/items.parquet (item_id, category,
release_ts, image = C*H*W uint8 pixels) and OUT/README.md (counts, config, licence) as one set: OUT
is written as a hidden temp folder beside it and swapped in whole, so it holds the old set or the
new one, never a mix; a killed run leaves only that temp folder, which the rerun removes, so just
rerun it. OUT must be new, empty or an earlier output (any other file, folder or link in it, hidden
ones included, is refused, not deleted), must not be the current folder or one above it (also
refused), and is created only once the inputs are valid.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

from pipelines.cli import HelpFormatter, configure_logging
from recsys_cl.config import SplitConfig
from recsys_cl.data.errors import DataError
from recsys_cl.data.fashion_clicks import (
    SEMI_SYNTHETIC,
    FashionClicksConfig,
    check_fashion_clicks_out,
    fashion_clicks_meta,
    generate_fashion_clicks,
    write_fashion_clicks,
)
from recsys_cl.data.fashion_mnist import load_fashion_mnist
from recsys_cl.io_atomic import OutputError

log = logging.getLogger("pipelines.make_fashion_clicks")
DEFAULTS = FashionClicksConfig()


FLAGS = ("num_items", "num_users", "clicks_per_user", "cold_fraction", "seed")
"""FashionClicksConfig fields this pipeline sets from a flag of the same name."""
_NAMES = re.compile(r"(?<![\w./\\-])(" + "|".join(FLAGS) + r"|data\.path)\b(?![/\\])")


def name_flags(message: str) -> str:
    """Errors of the library name config fields (``num_items``, ``data.path``); say the flags instead."""
    return _NAMES.sub(lambda m: "--fashion-mnist" if m[1] == "data.path" else "--" + m[1].replace("_", "-"),
                      message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.make_fashion_clicks",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--fashion-mnist", default="data/fashion-mnist", metavar="PATH",
                   help="folder with the Fashion-MNIST IDX gzip files (default: %(default)s)")
    p.add_argument("--out", default="runs/fashion-clicks", metavar="DIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--num-items", type=int, default=DEFAULTS.num_items,
                   help="items drawn from the training images, balanced over classes (default: %(default)s)")
    p.add_argument("--num-users", type=int, default=DEFAULTS.num_users,
                   help="simulated users (default: %(default)s)")
    p.add_argument("--clicks-per-user", type=float, default=DEFAULTS.clicks_per_user,
                   help="mean clicks per user (default: %(default)s)")
    p.add_argument("--cold-fraction", type=float, default=DEFAULTS.cold_fraction,
                   help="share of each class's items released late (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Generate and write the log; returns the metadata written into the README."""
    args = parse_args(argv)
    try:
        cfg = FashionClicksConfig(
            num_items=args.num_items, num_users=args.num_users, clicks_per_user=args.clicks_per_user,
            cold_fraction=args.cold_fraction, seed=args.seed,
        )
    except ValueError as e:  # named by its flag: "--num-users must be >= 1, got 0"
        raise SystemExit(f"argument error: {name_flags(str(e))}") from None
    try:
        check_fashion_clicks_out(args.out)  # before the work; creates nothing
    except OutputError as e:
        raise SystemExit(f"output error: {e}") from None
    try:
        images, labels = load_fashion_mnist(args.fashion_mnist, "train", key="--fashion-mnist")
        clicks, items = generate_fashion_clicks(images, labels, cfg)
    except DataError as e:
        raise SystemExit(f"data error: {name_flags(str(e))}") from None
    split = SplitConfig()
    meta = fashion_clicks_meta(clicks, items, cfg, images.shape[1:], split.val_quantile, split.test_quantile)
    try:
        out = write_fashion_clicks(args.out, clicks, items, meta)  # --out is created only here
    except OutputError as e:
        raise SystemExit(f"output error: {e}") from None
    c, late = meta["counts"], meta["late_item_clicks"]
    print(f"{SEMI_SYNTHETIC}.")
    print(f"wrote {out}: {c['clicks']} clicks, {c['users']} users, {c['items']} items "
          f"({c['late_items']} late, {c['late_items_clicked']} of them clicked); late items get "
          f"{late['share_of_test_period_clicks']:.1%} of test-period clicks and "
          f"{late['before_val_cutoff']} clicks before the validation cutoff.")
    print(
        "\nTrain on it (cold-start split: late items are ranked from their images; pretrain the encoder\n"
        "first with python -m pipelines.pretrain_simclr --summary-json runs/simclr_summary.json):\n"
        f"  python -m pipelines.train_two_tower --set data.format=parquet \\\n"
        f"    --set data.path={out}/clicks.parquet --set data.items_path={out}/items.parquet \\\n"
        "    --set split.kind=cold_start --set 'item_tower.encoders=[id,image]' --set item_tower.id_dropout=0.5 \\\n"
        "    --set item_tower.image.pretrained=runs:/<simclr_run_id>/encoder \\\n"
        "    --set tracking.experiment=recsys_cl_fashion --set tracking.registered_model_name=recsys_cl_fashion\n"
        "(its own experiment and registered model: not a version of the MovieLens recsys_cl_two_tower)\n"
        "An ID-only baseline: the same with --set 'item_tower.encoders=[id]'; the README's table:\n"
        "  python -m pipelines.ablation --variants pipelines/configs/ablations/fashion_cold_start.yaml ..."
    )
    return meta


if __name__ == "__main__":
    configure_logging()
    main()
