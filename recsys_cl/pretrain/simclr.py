"""SimCLR pretraining of the image encoder, its evaluation, and saving the encoder without its head.

Letters: B batch, C channels, H height, W width, D representation dim, P projection dim,
N evaluation images, K neighbours.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020
(arXiv 2002.05709): two augmented views of each image -> encoder f -> representation h (B, D) ->
projection head g -> z (B, P), L2-normalised -> NT-Xent (:func:`recsys_cl.losses.nt_xent_loss`).

Why the projection head is thrown away: the paper (Section 4.2, Figure 8, Table 3) shows that the
representation *before* the head, h = f(x), is much better for downstream tasks than z = g(h)
(over 10 points of linear-probe accuracy). The contrastive loss trains g(h) to be invariant to the
augmentations, so g discards information such as colour, orientation and exact position that the
loss does not need but downstream tasks (and our item tower) do. Keeping only f keeps that
information; g exists only to absorb the invariance pressure during pretraining. So only the
encoder's state dict and config are saved (:func:`save_encoder`).

Evaluation (both for the trained encoder and for the same architecture at its random
initialisation, i.e. the encoder's exact weights before the first step):

* ``linear_probe_acc``: accuracy of a logistic regression (scikit-learn) trained on frozen,
  L2-normalised representations of training images and tested on held-out test images;
* ``knn_recall@10``: for every test image, the fraction of its 10 nearest test images (inner
  product of L2-normalised representations = cosine, through :class:`~recsys_cl.index.ExactIndex`,
  the image itself excluded) that share its class.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from recsys_cl.eval.bootstrap import interval_verdict, paired_bootstrap
from recsys_cl.features.image import SimCLRTransform, check_images
from recsys_cl.losses import nt_xent_loss
from recsys_cl.pretrain.config import EncoderConfig, SimCLRConfig
from recsys_cl.pretrain.neighbours import label_pair_similarities, shared_label_hits
from recsys_cl.towers.image_encoder import ImageEncoder, ProjectionHead

log = logging.getLogger(__name__)
ENCODER_WEIGHTS = "encoder.pt"
ENCODER_CONFIG = "encoder_config.json"
EpochCallback = Callable[[int, Mapping[str, float]], None]


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, C, H, W) -> float32 tensor in [0, 1]."""
    t = torch.as_tensor(images)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def build_encoder(cfg: EncoderConfig) -> ImageEncoder:
    return ImageEncoder(cfg.in_channels, cfg.widths, cfg.blocks_per_stage)


def pretrain(
    encoder: ImageEncoder,
    head: ProjectionHead,
    images: np.ndarray,
    transform: SimCLRTransform,
    cfg: SimCLRConfig,
    on_epoch_end: EpochCallback | None = None,
) -> list[float]:
    """Train ``encoder`` and ``head`` with NT-Xent on two views of each image, in place.

    Args:
        images: uint8 (N, C, H, W).
        on_epoch_end: called with (epoch from 1, {"train_loss": mean loss, "epoch_seconds": ...}).

    Returns:
        Mean training loss of each epoch.
    """
    tc = cfg.train
    n = len(images)
    bs = min(tc.batch_size, n)
    if n < 2:
        raise ValueError(f"SimCLR needs at least 2 training images, got {n}")
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    data = torch.as_tensor(images)
    losses: list[float] = []
    for epoch in range(1, tc.epochs + 1):  # 1-based, as the two-tower loop: MLflow's step = epoch
        encoder.train()
        head.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - bs + 1, bs):  # drop the last partial batch (BN, fixed #negatives)
            x = to_float(data[perm[start:start + bs]])  # (B, C, H, W)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            v1, v2 = transform(x, seed=seed)  # 2 x (B, C, H, W)
            z = head(encoder(torch.cat([v1, v2])))  # (2B, P)
            z = F.normalize(z, dim=1)
            loss = nt_xent_loss(z[:bs], z[bs:], tc.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
        metrics = {"train_loss": losses[-1], "epoch_seconds": time.perf_counter() - t0}
        log.info("epoch %d: loss %.4f (%.1fs)", epoch, metrics["train_loss"], metrics["epoch_seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return losses


@torch.no_grad()
def embed(encoder: ImageEncoder, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """L2-normalised representations of ``images`` (N, C, H, W) in eval mode -> float32 (N, D)."""
    encoder.eval()
    x = torch.as_tensor(images)
    out = [F.normalize(encoder(to_float(x[i:i + batch_size])), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def linear_probe_correct(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Per test row (N_test,) bool: does a standardised logistic regression fit on (N_train, D)
    predict its label? The mean is the probe's accuracy."""
    if len(np.unique(train_y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes among its training images")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit(train_x, train_y)
    return np.asarray(clf.predict(test_x) == test_y)


def same_class_hits(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row (N,): the fraction of its ``k`` nearest other rows (inner product, via ExactIndex)
    with its label. vectors: (N, D), L2-normalised so that inner product = cosine; labels: (N,)."""
    one_hot = labels[:, None] == np.unique(labels)[None, :]  # (N, classes)
    return shared_label_hits(vectors, one_hot, k)


def same_class_recall_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean of :func:`same_class_hits` (same arguments)."""
    return float(same_class_hits(vectors, labels, k).mean())


def evaluate(
    encoder: ImageEncoder,
    probe_images: np.ndarray,
    probe_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    k: int = 10,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``({"linear_probe_acc", "knn_recall@10"}, per_image)`` (``@k`` in general) of the frozen
    encoder; ``per_image`` holds each test image's score under both keys (N_test,), whose means are
    the metrics, for a paired comparison of two encoders on the same images."""
    train_x, test_x = embed(encoder, probe_images), embed(encoder, test_images)
    per_image = {
        "linear_probe_acc": linear_probe_correct(train_x, probe_labels, test_x, test_labels, seed).astype(np.float64),
        f"knn_recall@{k}": same_class_hits(test_x, test_labels, k),
    }
    return {name: float(v.mean()) for name, v in per_image.items()}, per_image


def class_pair_similarities(
    encoder: ImageEncoder, images: np.ndarray, labels: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """Cosines of random pairs of different ``images`` (N, C, H, W), labels (N,): ``{"same class",
    "different class"}``, for :func:`~recsys_cl.eval.plots.similarity_histograms`."""
    one_hot = labels[:, None] == np.unique(labels)[None, :]  # (N, classes)
    pairs = label_pair_similarities(embed(encoder, images), one_hot, seed=seed)
    return {"same class": pairs["share a label"], "different class": pairs["share no label"]}


def save_encoder(encoder: ImageEncoder, cfg: SimCLRConfig, out_dir: str | Path) -> Path:
    """Write ``encoder.pt`` (state dict, no projection head) and ``encoder_config.json``, atomically
    (a killed run leaves no half-saved encoder)."""
    from recsys_cl.io_atomic import write_directory_atomically

    meta = {
        "architecture": "ImageEncoder",
        "model": dataclasses.asdict(cfg.model),
        "embedding_dim": encoder.embedding_dim,
        "image_size": list(cfg.data.image_size),
        "input": "float pixels in [0, 1], shape (B, C, H, W); output (B, D), not normalised",
    }

    def write(folder: Path) -> None:
        torch.save(encoder.state_dict(), folder / ENCODER_WEIGHTS)
        (folder / ENCODER_CONFIG).write_text(json.dumps(meta, indent=2))

    return write_directory_atomically(out_dir, write)


def load_encoder(model_dir: str | Path) -> ImageEncoder:
    """Rebuild the encoder saved by :func:`save_encoder` (eval mode).

    Raises:
        FileNotFoundError: the folder lacks the two files (the message lists what it holds), or they
            do not load (damaged weights, a config that is not the one save_encoder writes).
    """
    from recsys_cl.towers.content import artifact_kind

    d = Path(model_dir)
    fix = ("point item_tower.image.pretrained at a pretrain_simclr run's encoder/: runs:/<run_id>/encoder, "
           "or its local copy runs/simclr/<run_id>/encoder")
    if d.is_file():
        raise FileNotFoundError(f"{d} is a file; an image encoder is the folder holding {ENCODER_WEIGHTS} and "
                                f"{ENCODER_CONFIG}: {fix}")
    if not (d / ENCODER_WEIGHTS).is_file() or not (d / ENCODER_CONFIG).is_file():
        found = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        kind = artifact_kind(found, "an image encoder")
        shown = found[:20] + (["..."] if len(found) > 20 else [])
        raise FileNotFoundError(f"{d}: expected {ENCODER_WEIGHTS} and {ENCODER_CONFIG} (written by "
                                f"pretrain_simclr's save_encoder), found {shown or 'nothing'}{kind}; {fix}")
    try:
        m = json.loads((d / ENCODER_CONFIG).read_text())["model"]
        enc = ImageEncoder(m["in_channels"], m["widths"], m["blocks_per_stage"])
        enc.load_state_dict(torch.load(d / ENCODER_WEIGHTS, map_location="cpu", weights_only=True))
    except Exception as e:  # JSONDecodeError, KeyError, torch's zip / unpickling / size-mismatch errors
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise FileNotFoundError(
            f"{d}: {ENCODER_WEIGHTS} / {ENCODER_CONFIG} do not load ({type(e).__name__}: {first}); the files are "
            "damaged or not from pretrain_simclr: rerun it, or point at another run's encoder/"
        ) from e
    return enc.eval()


def subsets(cfg: SimCLRConfig, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The seeded subsets :func:`run_simclr` uses: ``(train rows, test rows, probe size)``; the probe
    images are the first ``probe size`` of the training rows."""
    rng = np.random.default_rng(cfg.train.seed)
    n = cfg.data.train_size or n_train
    train = rng.permutation(n_train)[: min(n, n_train)]
    test = rng.permutation(n_test)[: min(cfg.eval.test_size, n_test)]
    return train, test, min(cfg.eval.probe_train_size, len(train))


def check_sizes(
    cfg: SimCLRConfig, n_train: int, n_test: int, channels: int, train_labels: np.ndarray | None = None
) -> list[str]:
    """Check the config against the loaded data before a run opens.

    Returns:
        Warnings for sizes :func:`run_simclr` will lower to what the data has.

    Raises:
        ConfigError: the images have another channel count than ``model.in_channels``,
            ``eval.k`` is not below the number of test images (every image would be a neighbour), or
            (given ``train_labels``) the linear probe's images are all of one class.
    """
    from recsys_cl.config import ConfigError

    if train_labels is not None:
        train, _, n_probe = subsets(cfg, n_train, n_test)
        probe = np.unique(train_labels[train[:n_probe]])
        if len(probe) < 2:
            raise ConfigError(
                f"the {n_probe} linear-probe images (the first eval.probe_train_size={cfg.eval.probe_train_size} "
                f"of the data.train_size subset) are all of class {probe[0]}; the probe needs 2 classes: raise "
                "eval.probe_train_size (and data.train_size)"
            )

    if channels != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels={cfg.model.in_channels} but the images have {channels} channel(s); "
                          f"set model.in_channels={channels}")
    tests = min(cfg.eval.test_size, n_test)
    if cfg.eval.k >= tests:
        raise ConfigError(f"eval.k={cfg.eval.k} must be below the number of test images ({tests}); lower eval.k "
                          "or raise eval.test_size")
    trains = min(cfg.data.train_size or n_train, n_train)
    lowered = [(key, asked, got) for key, asked, got in (
        ("data.train_size", cfg.data.train_size, trains), ("eval.test_size", cfg.eval.test_size, tests),
        ("eval.probe_train_size", cfg.eval.probe_train_size, min(cfg.eval.probe_train_size, trains)),
        ("train.batch_size", cfg.train.batch_size, min(cfg.train.batch_size, trains)),
    ) if asked and got < asked]
    return [f"{key}={asked} is more than the data has: {got} used" for key, asked, got in lowered]


def run_simclr(
    cfg: SimCLRConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    out_dir: str | Path,
    on_epoch_end: EpochCallback | None = None,
) -> dict:
    """Subsample, pretrain, evaluate trained vs randomly initialised encoder, save the encoder.

    Args:
        train_images, test_images: uint8 (N, C, H, W); labels: (N,) class ids.

    Returns:
        ``{"metrics", "baseline_metrics", "losses", "encoder_dir", "sizes", "deltas", "similarities"}``;
        ``deltas``: per metric, after - random init with a 95% paired bootstrap interval over the
        test images and its verdict (:func:`~recsys_cl.eval.bootstrap.interval_verdict`);
        ``similarities``: :func:`class_pair_similarities` of the test images, random init and after.
    """
    size = tuple(cfg.data.image_size)
    for name, imgs in (("training", train_images), ("test", test_images)):
        try:
            check_images(torch.as_tensor(imgs[:1]).float(), cfg.model.in_channels, size)
        except ValueError as e:
            raise ValueError(f"{name} images: {e}") from e
    torch.manual_seed(cfg.train.seed)
    sub, te, n_probe = subsets(cfg, len(train_images), len(test_images))
    tr_x, tr_y = train_images[sub], train_labels[sub]
    te_x, te_y = test_images[te], test_labels[te]
    probe_x, probe_y = tr_x[:n_probe], tr_y[:n_probe]

    encoder = build_encoder(cfg.model)
    untrained = copy.deepcopy(encoder)  # the baseline: the same weights before the first step
    head = ProjectionHead(encoder.embedding_dim, cfg.model.projection_hidden, cfg.model.projection_dim)
    transform = SimCLRTransform(cfg.augment, cfg.model.in_channels, size)

    baseline, per_image_before = evaluate(untrained, probe_x, probe_y, te_x, te_y, cfg.eval.k, cfg.train.seed)
    log.info("untrained encoder: %s", baseline)
    losses = pretrain(encoder, head, tr_x, transform, cfg, on_epoch_end)
    del head  # the projection head is discarded; see the module docstring
    metrics, per_image_after = evaluate(encoder, probe_x, probe_y, te_x, te_y, cfg.eval.k, cfg.train.seed)
    log.info("SimCLR encoder: %s", metrics)
    deltas = {}
    for name in metrics:
        d = paired_bootstrap(per_image_after[name], per_image_before[name], seed=cfg.train.seed)
        deltas[name] = {**d, "verdict": interval_verdict(d)}
        log.info("%s after - before: %+.4f (95%% paired bootstrap over test images: %+.4f .. %+.4f): %s",
                 name, d["delta"], d["low"], d["high"], deltas[name]["verdict"])
    similarities = {name: class_pair_similarities(enc, te_x, te_y, cfg.train.seed)
                    for name, enc in (("random init", untrained), ("after SimCLR", encoder))}
    encoder_dir = save_encoder(encoder, cfg, out_dir)
    return {
        "metrics": metrics,
        "baseline_metrics": baseline,
        "losses": losses,
        "encoder_dir": str(encoder_dir),
        "sizes": {"pretrain": len(tr_x), "probe_train": len(probe_x), "test": len(te_x)},
        "deltas": deltas,
        "similarities": similarities,
    }
