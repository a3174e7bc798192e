"""Content encoders of the item tower: text and image, from pretrained encoders, frozen or fine-tuned.

Letters: B batch, M items (``FeatureSpec.items``), F the pretrained encoder's output size,
D the tower's embedding dim, L tokens per text, C/H/W image channels/height/width.

Two modes per modality (``item_tower.text.trainable`` / ``item_tower.image.trainable``):

* **frozen** (default): the pretrained encoder runs *once* over all M items before training
  (:func:`build_content`); its L2-normalised outputs ``(M, F)`` are stored in the feature spec and
  the tower learns only a linear map ``F -> D`` (:class:`FrozenContentEncoder`). Training then costs
  about what the ID model costs, and cold items (never clicked) get embeddings from their content.
  The outputs are cached on disk (``cache_dir``), keyed by the encoder's weights, the inputs and
  the version of the encoding code (:data:`CONTENT_CACHE_VERSION`, torch's and, for text,
  transformers' versions), so ablations and reruns do not recompute them and changed code does not
  reuse them. A hit refreshes the entry's modification time: ``python -m pipelines.clean_cache``
  removes entries no run has read for a while (:mod:`recsys_cl.cleanup`).
* **trainable**: the spec stores the raw inputs (token ids ``(M, L)``, or uint8 pixels
  ``(M, C, H, W)``) and the architecture; the encoder itself sits inside the tower
  (:class:`TrainableContentEncoder`) and is fine-tuned with the rest. Much slower on CPU.

The model directory is self-contained in both modes: frozen outputs / raw inputs are in
``features/`` and fine-tuned weights in ``model.pt``; the pretraining run is not needed to serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_cl.config import ImageInputConfig, ItemTowerConfig, TextInputConfig
from recsys_cl.data.errors import DataError
from recsys_cl.features.vocab import Vocab

log = logging.getLogger(__name__)
ResolveDir = Callable[[str], Path]

CONTENT_CACHE_VERSION = 1
"""Version of the code that turns an encoder and its inputs into frozen content features, part of
every cache key (:func:`_cache_key`) with torch's version and, for text, transformers': bump it when
that code changes what it computes (pooling, normalisation, tokenisation, pixel scaling in
``text_encoder.encode_texts``, ``pretrain.simclr.embed`` or here), so that no run reads features the
old code cached. Entries under the old keys stay until ``python -m pipelines.clean_cache`` removes them."""


class FrozenContentEncoder(nn.Module):
    """Cached outputs of a frozen encoder, mapped to the tower's space: item index (B,) -> (B, D).

    Args:
        features: (M, F) float, one row per item (zeros for items without content).
        dim: D.
    """

    def __init__(self, features: Tensor, dim: int) -> None:
        super().__init__()
        if features.dim() != 2:
            raise ValueError(f"features must be (M, F), got shape {tuple(features.shape)}")
        # not persistent: the spec (features/ of the model directory) holds them already
        self.register_buffer("features", features.float(), persistent=False)
        self.proj = nn.Linear(features.shape[1], dim)

    def forward(self, item_index: Tensor) -> Tensor:
        feats: Tensor = self.features  # type: ignore[assignment]
        return self.proj(feats[item_index])  # (B, D)


class TrainableContentEncoder(nn.Module):
    """A pretrained encoder fine-tuned inside the tower: item index (B,) -> its inputs -> (B, F) -> (B, D).

    Args:
        encoder: maps the gathered inputs (each ``(B, ...)``) to ``(B, F)``.
        inputs: per-item input tensors, each ``(M, ...)``, passed to ``encoder`` in this order.
        feature_dim: F.
        dim: D.
    """

    def __init__(self, encoder: nn.Module, inputs: dict[str, Tensor], feature_dim: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = list(inputs)
        for name, value in inputs.items():
            self.register_buffer(name, value, persistent=False)
        self.proj = nn.Linear(feature_dim, dim)

    def forward(self, item_index: Tensor) -> Tensor:
        args = [getattr(self, n)[item_index] for n in self.input_names]
        return self.proj(F.normalize(self.encoder(*args), dim=-1))  # (B, D)


class PixelEncoder(nn.Module):
    """uint8 pixels (B, C, H, W) -> the image encoder's (B, F), scaling to [0, 1] on the way."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: Tensor) -> Tensor:
        return self.encoder(pixels.float().div(255.0))


# --------------------------------------------------------------------------------------------
# Building the encoders from a feature spec's content
# --------------------------------------------------------------------------------------------


def content_encoder(name: str, content: dict[str, np.ndarray], meta: dict[str, Any], dim: int) -> nn.Module:
    """The tower module for content encoder ``name`` ("text" | "image") from a spec's content."""
    info = meta.get(name)
    if info is None:
        raise DataError(
            f"item_tower.encoders includes {name!r} but the feature spec holds no {name} features; "
            f"they are built by recsys_cl.experiment.prepare from item_tower.{name} "
            "(a model directory trained without them cannot use them)"
        )
    if info["mode"] == "frozen":
        return FrozenContentEncoder(torch.from_numpy(content[name]), dim)
    if name == "text":
        from transformers import AutoConfig, AutoModel

        from recsys_cl.towers.text_encoder import TextEncoder

        hf = dict(info["hf_config"])
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        encoder: nn.Module = TextEncoder(AutoModel.from_config(config))
        inputs = {"text_ids": torch.from_numpy(content["text_ids"]),
                  "text_mask": torch.from_numpy(content["text_mask"])}
    else:
        from recsys_cl.towers.image_encoder import ImageEncoder

        m = info["model"]
        encoder = PixelEncoder(ImageEncoder(m["in_channels"], m["widths"], m["blocks_per_stage"]))
        inputs = {"image_pixels": torch.from_numpy(content["image_pixels"])}
    return TrainableContentEncoder(encoder, inputs, int(info["feature_dim"]), dim)


def load_pretrained_weights(model: nn.Module, spec_meta: dict[str, Any], resolve: ResolveDir) -> None:
    """Copy pretrained encoder weights into the tower's trainable content encoders (fresh models only)."""
    for name, info in spec_meta.items():
        if info.get("mode") != "trainable":
            continue
        module: Any = model.item_tower.encoders[name]  # type: ignore[index, union-attr]
        src = _load_encoder(name, resolve(info["source"]) if info["source"] else None)[0]
        target = module.encoder.encoder if name == "image" else module.encoder
        target.load_state_dict(src.state_dict())


def artifact_kind(names: Collection[str], wanted: str) -> str:
    """``": that is <what the folder holding ``names`` is>, not <wanted>"`` for the folders this
    project writes (an image or text encoder, a two-tower model directory; for a pretraining run's
    folder, that the encoder is its ``encoder/``), else ``""``: so that a loader given the wrong kind
    of folder says which one it got."""
    if "model.pt" in names and "features" in names:
        what = "a two-tower model directory (train_two_tower)"
        wanted = "a pretrained encoder"
    elif "encoder.pt" in names and "encoder_config.json" in names:
        what = "an image encoder (pretrain_simclr)"
    elif "config.json" in names:  # a Hugging Face model folder
        what = "a text encoder (pretrain_simcse or Hugging Face)"
    elif "encoder" in names:  # a pretraining run's artifacts, or its runs/<pipeline>/<run_id> folder
        return ": the encoder is its subfolder encoder/ (add /encoder to the path or URI)"
    else:
        return ""
    return f": that is {what}, not {wanted}"


# --------------------------------------------------------------------------------------------
# Computing content features for every item (the "features" stage of a content run)
# --------------------------------------------------------------------------------------------


def aligned_items(items: Vocab, table: pl.DataFrame | None, what: str) -> pl.DataFrame:
    """The item table's rows in ``items`` order (missing items: null columns)."""
    if table is None:
        raise DataError(
            f"item_tower.encoders includes {what!r} but the data has no item table; set data.items_path "
            "to a Parquet/CSV file with item_id and the content columns (MovieLens folders have movies.csv)"
        )
    ids = pl.DataFrame({"item_id": items.ids}).with_columns(pl.col("item_id").cast(table["item_id"].dtype))
    out = ids.join(table, on="item_id", how="left", maintain_order="left")
    missing = out.height - ids.join(table, on="item_id", how="semi").height
    if missing:
        log.warning("%d of %d items are not in the item table: their %s input is empty", missing, out.height, what)
    return out


def item_pixels(table: pl.DataFrame, cfg: ImageInputConfig) -> np.ndarray:
    """uint8 (M, C, H, W) from the list column ``cfg.column`` (C*H*W values per row, row-major).

    Rows with a null image get zeros. Any other length is an error naming the item, and so are
    values that are not integer pixels in [0, 255] (floats in [0, 1] would all become 0: black).
    """
    col = cfg.column
    if col not in table.columns:
        raise DataError(
            f"item_tower.image.column {col!r} is not in the item table (columns: {table.columns}); "
            "set item_tower.image.column to the column holding each item's pixels"
        )
    c, h, w = cfg.shape
    n = c * h * w
    values = table[col]
    if isinstance(values.dtype, pl.Array):  # a fixed-size list: the same values, read as a list
        values = values.cast(pl.List(values.dtype.inner))
    if not isinstance(values.dtype, pl.List) or not (values.dtype.inner.is_numeric() or values.dtype.inner == pl.Null):
        raise DataError(
            f"item-table column {col!r} must be a list of C*H*W = {n} uint8 pixel values per item "
            f"(item_tower.image.shape {list(cfg.shape)}), got dtype {values.dtype}"
        )
    lengths = values.list.len().fill_null(0).to_numpy()
    bad = np.flatnonzero((lengths != n) & (lengths != 0) | (lengths == 0) & values.is_not_null().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"item {table['item_id'][i]!r}: its image has {int(lengths[i])} values, expected C*H*W = {n} "
            f"for item_tower.image.shape {list(cfg.shape)} ({len(bad)} item(s) affected); set "
            "item_tower.image.shape to the images' (C, H, W) or fix the item table"
        )
    flat = values.fill_null(pl.lit([0] * n, dtype=pl.List(pl.UInt8))).explode().to_numpy()  # n values per row
    if flat.dtype.kind == "f":  # float pixels (or nulls inside a list): whole numbers only
        fractional = ~np.isfinite(flat) | (flat != np.round(flat))
        if fractional.any():
            j = int(np.flatnonzero(fractional)[0])
            raise DataError(
                f"item-table column {col!r} holds non-integer pixel values (e.g. {flat[j]:.4g} in item "
                f"{table['item_id'][j // n]!r}); item images must be integer pixels in [0, 255]: if they are "
                "floats in [0, 1], multiply by 255 and round before writing the item table"
            )
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        j = int(np.flatnonzero((flat < 0) | (flat > 255))[0])
        raise DataError(
            f"item-table column {col!r} must hold uint8 pixels in [0, 255]; found values from {flat.min():.0f} to "
            f"{flat.max():.0f} (item {table['item_id'][j // n]!r} is the first outside); rescale the images "
            "to 0..255"
        )
    return flat.astype(np.uint8).reshape(len(table), c, h, w)


def build_content(
    items: Vocab,
    table: pl.DataFrame | None,
    cfg: ItemTowerConfig,
    resolve: ResolveDir,
    cache_dir: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Content arrays and their description for every content encoder in ``cfg.encoders``.

    Returns:
        ``(content, meta)``: frozen -> ``content["text"|"image"]`` (M, F) float32 L2-normalised;
        trainable -> ``text_ids``/``text_mask`` (M, L) int64 or ``image_pixels`` (M, C, H, W)
        uint8. ``meta[name]`` holds mode, source, feature_dim and the architecture.
    """
    content: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    if "text" in cfg.encoders:
        frame = aligned_items(items, table, "text")
        _text_content(frame, cfg.text, resolve, cache_dir, content, meta)
    if "image" in cfg.encoders:
        frame = aligned_items(items, table, "image")
        _image_content(frame, cfg.image, resolve, cache_dir, content, meta)
    return content, meta


def _load_encoder(name: str, directory: Path | None) -> tuple[nn.Module, Any]:
    if name == "text":
        from recsys_cl.towers.text_encoder import load_text_encoder

        return load_text_encoder(directory)
    from recsys_cl.pretrain.simclr import load_encoder

    if directory is None:
        raise DataError("item_tower.image.pretrained is not set")
    return load_encoder(directory), None


def _resolve_source(uri: str | None, resolve: ResolveDir, key: str) -> Path | None:
    if uri is None:
        return None
    try:
        return resolve(uri)
    except (FileNotFoundError, OSError) as e:
        raise DataError(
            f"{key}={uri!r} cannot be loaded: {e}. Expected a local encoder folder or an MLflow URI such "
            "as runs:/<run_id>/encoder (printed by the pretraining pipeline's summary)"
        ) from None


def _text_content(
    frame: pl.DataFrame, cfg: TextInputConfig, resolve: ResolveDir, cache_dir: str | None,
    content: dict[str, np.ndarray], meta: dict[str, dict[str, Any]],
) -> None:
    from recsys_cl.features.text import item_texts
    from recsys_cl.towers.text_encoder import (
        default_text_model_dir,
        encode_texts,
        load_text_encoder,
        max_positions,
    )

    texts = item_texts(frame, cfg.columns, key="item_tower.text.columns")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if texts and len(empty) == len(texts):
        raise DataError(
            f"every one of the {len(texts)} items has an empty text from item_tower.text.columns {list(cfg.columns)} "
            "(only nulls, empty strings or '(no genres listed)' there), so the text encoder would give every item "
            f"the same vector; choose columns that hold text (the item table has {frame.columns}) or remove 'text' "
            "from item_tower.encoders"
        )
    if empty:
        log.warning("%d of %d items have an empty text from item_tower.text.columns %s (e.g. item %r): they all "
                    "get the same text vector, the encoder's output for an empty string",
                    len(empty), len(texts), list(cfg.columns), frame["item_id"][empty[0]])
    directory = _resolve_source(cfg.pretrained, resolve, "item_tower.text.pretrained")
    try:
        directory = directory or default_text_model_dir()
        encoder, tokenizer = load_text_encoder(directory)
    except FileNotFoundError as e:
        raise DataError(f"item_tower.text.pretrained={cfg.pretrained!r}: {e}") from None
    limit = max_positions(encoder)
    if limit is not None and cfg.max_length > limit:
        raise DataError(
            f"item_tower.text.max_length={cfg.max_length} but the text encoder at {directory} reads at most {limit} "
            f"tokens (its max_position_embeddings); set item_tower.text.max_length to at most {limit}"
        )
    info: dict[str, Any] = {"source": cfg.pretrained, "encoder_sha256": encoder_digest(directory),
                            "code_version": code_version("text"), "feature_dim": int(encoder.embedding_dim),
                            "columns": list(cfg.columns), "max_length": cfg.max_length}
    if cfg.trainable:
        tok = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.max_length,
                        return_tensors="np")
        content["text_ids"] = np.asarray(tok["input_ids"], dtype=np.int64)
        content["text_mask"] = np.asarray(tok["attention_mask"], dtype=np.int64)
        meta["text"] = {**info, "mode": "trainable", "hf_config": json.loads(encoder.model.config.to_json_string())}
        return
    key = _cache_key("text", info["encoder_sha256"], texts, cfg.max_length)
    feats = _cached(cache_dir, key)
    if feats is None:
        log.info("text encoder %s: embedding %d item texts (frozen; cached afterwards)", directory, len(texts))
        feats = encode_texts(encoder, tokenizer, texts, max_length=cfg.max_length, normalize=True, progress=True)
        _store(cache_dir, key, feats)
    content["text"] = np.asarray(feats, dtype=np.float32)
    meta["text"] = {**info, "mode": "frozen"}


def _image_content(
    frame: pl.DataFrame, cfg: ImageInputConfig, resolve: ResolveDir, cache_dir: str | None,
    content: dict[str, np.ndarray], meta: dict[str, dict[str, Any]],
) -> None:
    from recsys_cl.pretrain.simclr import ENCODER_CONFIG, embed, load_encoder

    pixels = item_pixels(frame, cfg)
    directory = _resolve_source(cfg.pretrained, resolve, "item_tower.image.pretrained")
    assert directory is not None  # ItemTowerConfig requires image.pretrained
    try:
        encoder = load_encoder(directory)
    except FileNotFoundError as e:
        raise DataError(f"item_tower.image.pretrained={cfg.pretrained!r}: {e}") from None
    saved = json.loads((directory / ENCODER_CONFIG).read_text())
    arch = saved["model"]
    if arch["in_channels"] != cfg.shape[0]:
        raise DataError(
            f"the image encoder at {directory} reads {arch['in_channels']}-channel images but "
            f"item_tower.image.shape is {list(cfg.shape)}; use an encoder pretrained on images of that shape"
        )
    size = saved.get("image_size")
    if size is not None and list(size) != list(cfg.shape[1:]):
        raise DataError(
            f"the image encoder at {directory} was pretrained on {size[0]}x{size[1]} images but "
            f"item_tower.image.shape is {list(cfg.shape)} (pixels would be reshaped, scrambling the pictures); "
            f"set item_tower.image.shape=[{cfg.shape[0]}, {size[0]}, {size[1]}] or use an encoder pretrained "
            "on images of that shape"
        )
    info: dict[str, Any] = {"source": cfg.pretrained, "encoder_sha256": encoder_digest(directory),
                            "code_version": code_version("image"), "feature_dim": int(encoder.embedding_dim),
                            "model": arch, "shape": list(cfg.shape)}
    if cfg.trainable:
        content["image_pixels"] = pixels
        meta["image"] = {**info, "mode": "trainable"}
        return
    key = _cache_key("image", info["encoder_sha256"], pixels, 0)
    feats = _cached(cache_dir, key)
    if feats is None:
        log.info("image encoder %s: embedding %d item images (frozen; cached afterwards)", directory, len(pixels))
        feats = embed(encoder, pixels)
        _store(cache_dir, key, feats)
    content["image"] = np.asarray(feats, dtype=np.float32)
    meta["image"] = {**info, "mode": "frozen"}


def encoder_digest(directory: Path) -> str:
    """SHA-256 of an encoder folder's files (names and bytes): which weights a spec's content came from,
    so that a rerun resumes or reuses a checkpoint only with the same encoder
    (:func:`recsys_cl.experiment.resume_fingerprint`), even when the folder's path is the same."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        h.update(f.relative_to(directory).as_posix().encode() + b"\x00")
        h.update(f.read_bytes())
    return h.hexdigest()


def code_version(name: str) -> str:
    """What computed content encoder ``name``'s frozen features besides its weights and inputs:
    :data:`CONTENT_CACHE_VERSION`, torch's version and, for ``"text"``, transformers' (a library
    upgrade may change the numbers: kernels, tokenisers, attention implementations)."""
    version = f"v{CONTENT_CACHE_VERSION} torch {torch.__version__}"
    if name == "text":
        import transformers

        version += f" transformers {transformers.__version__}"
    return version


def _cache_key(name: str, encoder_sha256: str, inputs: Any, max_length: int) -> str:
    """``<name>-<20 hex>``: the cache entry of encoder ``name`` with the weights ``encoder_sha256``
    (:func:`encoder_digest`) run by this code (:func:`code_version`) over ``inputs``."""
    h = hashlib.sha256(f"{name}|{max_length}|{code_version(name)}|{encoder_sha256}|".encode())
    if isinstance(inputs, np.ndarray):
        # the same bytes read as another (C, H, W) are other pictures, hence other features
        h.update(f"{inputs.dtype}{inputs.shape}".encode())
        h.update(inputs.tobytes())
    else:
        h.update("\x00".join(inputs).encode())
    return f"{name}-{h.hexdigest()[:20]}"


def _cached(cache_dir: str | None, key: str) -> np.ndarray | None:
    if not cache_dir:
        return None
    path = Path(cache_dir) / f"{key}.npy"
    try:
        feats = np.load(path)
    except FileNotFoundError:  # never written, or pruned (recsys_cl.cleanup) since it was looked for
        return None
    log.info("content features from cache %s", path)
    with contextlib.suppress(OSError):  # an entry's age is the time since a run last read it (unless read-only)
        os.utime(path)
    return np.asarray(feats)


def _store(cache_dir: str | None, key: str, feats: np.ndarray) -> None:
    if not cache_dir:
        return
    from recsys_cl.io_atomic import write_file_atomically

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to the temp name
            np.save(f, feats)

    write_file_atomically(Path(cache_dir) / f"{key}.npy", save)  # under the umask: a shared cache stays readable
