"""Content encoders in the item tower: frozen cached outputs, fine-tuned encoders, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_cl.cleanup import CACHE_FILE
from recsys_cl.config import ImageInputConfig, ItemTowerConfig, ModelConfig, TextInputConfig, UserTowerConfig
from recsys_cl.data.errors import DataError
from recsys_cl.features.spec import build_feature_spec
from recsys_cl.features.vocab import Vocab
from recsys_cl.pretrain.config import SimCLRConfig
from recsys_cl.pretrain.simclr import build_encoder, save_encoder
from recsys_cl.towers import content as content_mod
from recsys_cl.towers.content import FrozenContentEncoder, build_content, item_pixels
from recsys_cl.towers.text_encoder import make_tiny_text_encoder
from recsys_cl.towers.two_tower import build_two_tower
from recsys_cl.train.steps import embed_items

ITEMS = pl.DataFrame({
    "item_id": [1, 2, 3, 4],
    "title": ["red shoes", "blue shoes", "red hat", "green hat"],
    "genres": [["Footwear"], ["Footwear"], ["Hats"], ["Hats"]],
    "image": [list(np.full(16, i * 40, dtype=np.uint8)) for i in range(4)],
}).with_columns(pl.col("image").cast(pl.List(pl.UInt8)))
TRAIN = pl.DataFrame({"user_id": [10, 10, 11], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})


def _identity(uri: str) -> Path:
    if not Path(uri).exists():
        raise FileNotFoundError(f"{uri} does not exist")
    return Path(uri)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = ITEMS["title"].to_list() * 5 + ["Genres: Footwear", "Genres: Hats"]
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_bert"), corpus, vocab_size=60)


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SimCLRConfig()
    torch.manual_seed(0)
    enc = build_encoder(cfg.model)
    out = save_encoder(enc, cfg, tmp_path_factory.mktemp("img") / "encoder")
    meta = json.loads((out / "encoder_config.json").read_text())  # the items here are 4 x 4 pictures
    (out / "encoder_config.json").write_text(json.dumps({**meta, "image_size": [4, 4]}))
    return out


def _cfg(encoders: tuple[str, ...], text: Path | None = None, image: Path | None = None,
         trainable: bool = False) -> ItemTowerConfig:
    return ItemTowerConfig(
        encoders=encoders,  # type: ignore[arg-type]
        text=TextInputConfig(pretrained=str(text) if text else None, columns=("title", "genres"),
                             trainable=trainable, max_length=8),
        image=ImageInputConfig(pretrained=str(image) if image else None, shape=(1, 4, 4), trainable=trainable),
        cache_dir=None,
    )


def test_frozen_encoder_maps_cached_rows() -> None:
    feats = torch.eye(3)
    enc = FrozenContentEncoder(feats, dim=5)
    out = enc(torch.tensor([2, 0]))
    assert out.shape == (2, 5)
    torch.testing.assert_close(out[0], enc.proj.weight[:, 2] + enc.proj.bias)
    assert "features" not in enc.state_dict()  # held by the feature spec, not model.pt


def test_item_pixels_shapes_and_errors() -> None:
    px = item_pixels(ITEMS, ImageInputConfig(pretrained="x", shape=(1, 4, 4)))
    assert px.shape == (4, 1, 4, 4) and px.dtype == np.uint8 and px[3].max() == 120
    with pytest.raises(DataError, match=r"item 1: its image has 16 values, expected C\*H\*W = 784"):
        item_pixels(ITEMS, ImageInputConfig(pretrained="x", shape=(1, 28, 28)))
    with pytest.raises(DataError, match="'picture' is not in the item table"):
        item_pixels(ITEMS, ImageInputConfig(pretrained="x", column="picture", shape=(1, 4, 4)))
    with pytest.raises(DataError, match="must be a list"):
        item_pixels(ITEMS.with_columns(pl.lit("x").alias("image")), ImageInputConfig(pretrained="x", shape=(1, 4, 4)))
    with_null = ITEMS.with_columns(pl.when(pl.col("item_id") == 2).then(None).otherwise(pl.col("image")).alias("image"))
    assert item_pixels(with_null, ImageInputConfig(pretrained="x", shape=(1, 4, 4)))[1].max() == 0


def test_frozen_text_and_image_content_in_the_tower(tiny_text: Path, tiny_image: Path) -> None:
    spec = build_feature_spec(TRAIN, ITEMS)
    content, meta = build_content(spec.items, ITEMS, _cfg(("id", "text", "image"), tiny_text, tiny_image), _identity)
    assert content["text"].shape == (4, 32) and content["image"].shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(content["text"], axis=1), 1.0, rtol=1e-5)
    assert meta["text"]["mode"] == meta["image"]["mode"] == "frozen"
    import dataclasses

    spec = dataclasses.replace(spec, content=content, content_meta=meta)
    model = build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                            _cfg(("id", "text", "image"), tiny_text, tiny_image))
    emb = embed_items(model, spec.num_items)
    assert emb.shape == (4, 8)
    assert torch.linalg.norm(emb[3]) > 0.99  # item 4: never clicked, embedded from its content


def test_trainable_content_round_trips_through_the_model_dir(tiny_text: Path, tiny_image: Path, tmp_path: Path) -> None:
    import dataclasses

    from recsys_cl.config import RunConfig
    from recsys_cl.train.checkpoint import load_model_dir, save_model_dir

    item_cfg = _cfg(("id", "text", "image"), tiny_text, tiny_image, trainable=True)
    spec = build_feature_spec(TRAIN, ITEMS)
    content, meta = build_content(spec.items, ITEMS, item_cfg, _identity)
    assert content["text_ids"].shape == (4, 8) and content["image_pixels"].shape == (4, 1, 4, 4)
    spec = dataclasses.replace(spec, content=content, content_meta=meta)
    cfg = RunConfig(model=ModelConfig(embedding_dim=8), item_tower=item_cfg)
    model = build_two_tower(spec, cfg.model, cfg.user_tower, cfg.item_tower)
    content_mod.load_pretrained_weights(model, meta, _identity)
    from recsys_cl.towers.text_encoder import load_text_encoder

    pretrained, _ = load_text_encoder(tiny_text)
    text_module = model.item_tower.encoders["text"]
    for (k, v), (_, w) in zip(text_module.encoder.state_dict().items(), pretrained.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    n_params = sum(p.numel() for p in text_module.encoder.parameters() if p.requires_grad)
    assert n_params > 1000  # the transformer itself is trained, not only the projection
    save_model_dir(tmp_path / "model", model, spec, cfg)
    again, spec2, _ = load_model_dir(tmp_path / "model")
    torch.testing.assert_close(embed_items(again, 4), embed_items(model.eval(), 4))


def test_text_content_is_cached_on_disk(tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = build_feature_spec(TRAIN, ITEMS)
    cfg = _cfg(("id", "text"), tiny_text)
    first, _ = build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    (entry,) = (tmp_path / "cache").glob("text-*.npy")
    assert CACHE_FILE.fullmatch(entry.name)  # what pipelines.clean_cache prunes

    import recsys_cl.towers.text_encoder as te

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(te, "encode_texts", boom)
    second, _ = build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(first["text"], second["text"])
    changed = ITEMS.with_columns(pl.col("title").str.to_uppercase().str.replace("RED", "PINK"))
    with pytest.raises(AssertionError, match="cache was not used"):  # other texts: another key
        build_content(spec.items, changed, cfg, _identity, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("changed", ["CONTENT_CACHE_VERSION", "torch", "transformers"])
def test_the_text_cache_is_not_reused_by_other_encoding_code(
    changed: str, tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key held only the encoder's files and the inputs: after a change to the pooling code (a
    bumped CONTENT_CACHE_VERSION) or a torch / transformers upgrade, the old features were read back."""
    import transformers

    import recsys_cl.towers.text_encoder as te

    spec = build_feature_spec(TRAIN, ITEMS)
    cfg = _cfg(("id", "text"), tiny_text)
    cache = tmp_path / "cache"
    build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(cache))
    calls = []
    encode = te.encode_texts
    monkeypatch.setattr(te, "encode_texts", lambda *a, **k: calls.append(1) or encode(*a, **k))
    build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(cache))
    assert calls == []  # unchanged: read from the cache
    if changed == "CONTENT_CACHE_VERSION":
        monkeypatch.setattr(content_mod, changed, content_mod.CONTENT_CACHE_VERSION + 1)
    else:
        monkeypatch.setattr(torch if changed == "torch" else transformers, "__version__", "99.0.0")
    build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(cache))
    assert calls == [1] and len(list(cache.glob("text-*.npy"))) == 2


@pytest.mark.parametrize("changed", ["CONTENT_CACHE_VERSION", "torch"])
def test_the_image_cache_is_not_reused_by_other_encoding_code(
    changed: str, tiny_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import recsys_cl.pretrain.simclr as simclr

    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    cfg = _cfg(("id", "image"), image=tiny_image)
    cache = tmp_path / "cache"
    build_content(items, ITEMS, cfg, _identity, cache_dir=str(cache))
    calls = []
    embed = simclr.embed
    monkeypatch.setattr(simclr, "embed", lambda *a, **k: calls.append(1) or embed(*a, **k))
    if changed == "CONTENT_CACHE_VERSION":
        monkeypatch.setattr(content_mod, changed, content_mod.CONTENT_CACHE_VERSION + 1)
    else:
        monkeypatch.setattr(torch, "__version__", "99.0.0")
    build_content(items, ITEMS, cfg, _identity, cache_dir=str(cache))
    assert calls == [1] and len(list(cache.glob("image-*.npy"))) == 2


def test_a_cache_hit_refreshes_the_entry_s_age(tiny_text: Path, tmp_path: Path) -> None:
    """The cache entry's modification time is when a run last used it, which clean_cache's
    --older-than-days reads: an entry read every day but written long ago is not pruned."""
    spec = build_feature_spec(TRAIN, ITEMS)
    cfg = _cfg(("id", "text"), tiny_text)
    build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    (entry,) = (tmp_path / "cache").glob("text-*.npy")
    os.utime(entry, (1e9, 1e9))  # written in 2001
    build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    assert entry.stat().st_mtime > time.time() - 60


def test_a_cache_entry_pruned_as_it_is_read_is_encoded_again(
    tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by ``is_file`` and deleted before ``np.load`` (clean_cache --yes meanwhile), it failed the run."""
    spec = build_feature_spec(TRAIN, ITEMS)
    cfg = _cfg(("id", "text"), tiny_text)
    first, _ = build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    load = np.load

    def pruned_meanwhile(path: Path, *args: object, **kwargs: object) -> object:
        Path(path).unlink(missing_ok=True)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", pruned_meanwhile)
    again, _ = build_content(spec.items, ITEMS, cfg, _identity, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(again["text"], first["text"], rtol=1e-5)
    assert len(list((tmp_path / "cache").glob("text-*.npy"))) == 1  # and cached again


def test_clear_errors(tiny_text: Path, tiny_image: Path, tmp_path: Path) -> None:
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    with pytest.raises(DataError, match="item_tower.text.pretrained=.*cannot be loaded"):
        build_content(items, ITEMS, _cfg(("id", "text"), tmp_path / "nowhere"), _identity)
    with pytest.raises(DataError, match=r"no column\(s\) \['genres'\].*choose item_tower\.text\.columns from"):
        build_content(items, ITEMS.drop("genres"), _cfg(("id", "text"), tiny_text), _identity)
    with pytest.raises(DataError, match="no item table"):
        build_content(items, None, _cfg(("id", "text"), tiny_text), _identity)
    with pytest.raises(DataError, match="3-channel|1-channel images but item_tower.image.shape"):
        bad = ImageInputConfig(pretrained=str(tiny_image), shape=(3, 4, 4))
        cfg = ItemTowerConfig(encoders=("id", "image"), image=bad, cache_dir=None)
        build_content(items, ITEMS.with_columns(pl.col("image").list.concat(pl.col("image")).list.concat(
            pl.col("image"))), cfg, _identity)
    spec = build_feature_spec(TRAIN, ITEMS)
    with pytest.raises(DataError, match="holds no text features"):
        build_two_tower(spec, ModelConfig(embedding_dim=8), UserTowerConfig(), _cfg(("id", "text"), tiny_text))


def test_id_dropout_only_while_training() -> None:
    from recsys_cl.towers.item_tower import IdEncoder

    torch.manual_seed(0)
    enc = IdEncoder(100, 4, dropout=0.5)
    idx = torch.arange(100)
    zeroed = (enc(idx).abs().sum(1) == 0).float().mean().item()
    assert 0.3 < zeroed < 0.7
    enc.eval()
    assert (enc(idx).abs().sum(1) > 0).all()


def test_float_or_out_of_range_pixels_are_refused_and_fixed_size_arrays_accepted() -> None:
    """Pixels in [0, 1] (a float image) used to be cast to uint8 silently: every image turned black
    and training went on; an Array column (a fixed-size list) crashed with a polars traceback."""
    cfg = ImageInputConfig(pretrained="x", shape=(1, 4, 4))
    as_floats = ITEMS.with_columns(pl.col("image").cast(pl.List(pl.Float32)).list.eval(pl.element() / 255))
    with pytest.raises(DataError, match=r"'image' holds non-integer pixel values \(e\.g\. 0\.156.* item 2\).*"
                                        r"multiply by 255"):
        item_pixels(as_floats, cfg)
    whole = ITEMS.with_columns(pl.col("image").cast(pl.List(pl.Float64)))  # integral floats are pixels
    np.testing.assert_array_equal(item_pixels(whole, cfg), item_pixels(ITEMS, cfg))
    too_big = ITEMS.with_columns(pl.col("image").cast(pl.List(pl.Int64)).list.eval(pl.element() * 4))
    with pytest.raises(DataError, match=r"uint8 pixels in \[0, 255\]; found values from 0 to 480 "
                                        r"\(item 3 is the first outside\)"):
        item_pixels(too_big, cfg)
    as_text = ITEMS.with_columns(pl.col("image").cast(pl.List(pl.String)))
    with pytest.raises(DataError, match=r"must be a list of C\*H\*W = 16 uint8 pixel values .*dtype List\(String\)"):
        item_pixels(as_text, cfg)
    fixed = ITEMS.with_columns(pl.col("image").cast(pl.Array(pl.UInt8, 16)))
    np.testing.assert_array_equal(item_pixels(fixed, cfg), item_pixels(ITEMS, cfg))


def test_image_cache_key_includes_the_image_shape(tmp_path: Path) -> None:
    """An encoder saved without ``image_size`` (the shape check is then skipped) fed the same pixels
    as (1, 2, 8) instead of (1, 4, 4) computes other features; the cache must not return the old ones."""
    cfg = SimCLRConfig()
    torch.manual_seed(0)
    enc = save_encoder(build_encoder(cfg.model), cfg, tmp_path / "encoder")
    meta = json.loads((enc / "encoder_config.json").read_text())
    del meta["image_size"]
    (enc / "encoder_config.json").write_text(json.dumps(meta))
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    feats = {}
    for shape in ((1, 4, 4), (1, 2, 8)):
        item_cfg = ItemTowerConfig(encoders=("id", "image"), image=ImageInputConfig(pretrained=str(enc), shape=shape))
        feats[shape] = build_content(items, ITEMS, item_cfg, _identity, cache_dir=str(tmp_path / "cache"))[0]["image"]
    uncached = build_content(items, ITEMS, ItemTowerConfig(
        encoders=("id", "image"), image=ImageInputConfig(pretrained=str(enc), shape=(1, 2, 8)), cache_dir=None),
        _identity)[0]["image"]
    np.testing.assert_array_equal(feats[(1, 2, 8)], uncached)
    assert not np.allclose(feats[(1, 2, 8)], feats[(1, 4, 4)])


def test_empty_item_texts_are_refused_or_counted(tiny_text: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A text column that is null for every item trained silently on one identical text per item."""
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    cfg = ItemTowerConfig(encoders=("id", "text"), cache_dir=None,
                          text=TextInputConfig(pretrained=str(tiny_text), columns=("title",), max_length=8))
    no_titles = ITEMS.with_columns(pl.lit(None, dtype=pl.String).alias("title"))
    with pytest.raises(DataError, match=r"every one of the 4 items has an empty text from item_tower\.text\.columns "
                                        r"\['title'\].*choose columns that hold"):
        build_content(items, no_titles, cfg, _identity)
    blank = pl.when(pl.col("item_id") <= 2).then(pl.lit(" ")).otherwise(pl.col("title"))
    some = ITEMS.with_columns(blank.alias("title"))
    with caplog.at_level("WARNING", logger="recsys_cl.towers.content"):
        build_content(items, some, cfg, _identity)
    assert "2 of 4 items have an empty text from item_tower.text.columns ['title'] (e.g. item 1)" in caplog.text


def test_max_length_beyond_the_encoders_positions_is_refused(tiny_text: Path) -> None:
    """The tiny BERT has 128 positions; 300 tokens crashed in the embedding layer with a RuntimeError."""
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    long = ITEMS.with_columns(pl.lit(" ".join(["red"] * 300)).alias("title"))
    for trainable in (False, True):
        cfg = ItemTowerConfig(encoders=("id", "text"), cache_dir=None, text=TextInputConfig(
            pretrained=str(tiny_text), columns=("title",), max_length=300, trainable=trainable))
        with pytest.raises(DataError, match=r"item_tower\.text\.max_length=300 but the text encoder at .* reads at "
                                            r"most 128 tokens.*set item_tower\.text\.max_length to at most 128"):
            build_content(items, long, cfg, _identity)


def test_an_encoder_of_the_wrong_kind_is_named(tiny_text: Path, tiny_image: Path, tmp_path: Path) -> None:
    """Each loader says what the folder it was given is: the other modality's encoder, or a two-tower
    model directory (model.pt + features/, whose encoders cannot be loaded as pretrained ones)."""
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    with pytest.raises(DataError, match=r"found \['encoder.pt', 'encoder_config.json'\]\): that is an image encoder "
                                        r"\(pretrain_simclr\), not a text encoder"):
        build_content(items, ITEMS, _cfg(("id", "text"), tiny_image), _identity)
    with pytest.raises(DataError, match=r"that is a text encoder \(pretrain_simcse or Hugging Face\), not an image"):
        build_content(items, ITEMS, _cfg(("id", "image"), image=tiny_text), _identity)
    model_dir = tmp_path / "two_tower"
    (model_dir / "features").mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(b"")
    (model_dir / "config.yaml").write_text("{}\n")
    for encoders, kwargs in ((("id", "text"), {"text": model_dir}), (("id", "image"), {"image": model_dir})):
        with pytest.raises(DataError, match=r"that is a two-tower model directory \(train_two_tower\), not a "
                                            r"pretrained encoder; point .* at a pretrain_sim"):
            build_content(items, ITEMS, _cfg(encoders, **kwargs), _identity)  # type: ignore[arg-type]
    run_folder = tmp_path / "runs" / "simclr" / "abc"  # the run's folder, not its encoder/
    shutil.copytree(tiny_image, run_folder / "encoder")
    with pytest.raises(DataError, match=r"found \['encoder'\]: the encoder is its subfolder encoder/ \(add /encoder"):
        build_content(items, ITEMS, _cfg(("id", "image"), image=run_folder), _identity)


def test_content_meta_names_the_encoder_weights(tiny_text: Path, tmp_path: Path) -> None:
    """A fine-tuned encoder's spec holds only token ids: its meta's encoder_sha256 is what tells a
    retrained encoder written to the same folder apart (recsys_cl.experiment's resume fingerprint)."""
    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    folder = make_tiny_text_encoder(tmp_path / "enc", ITEMS["title"].to_list() * 5, vocab_size=60)
    cfg = _cfg(("id", "text"), folder, trainable=True)
    first = build_content(items, ITEMS, cfg, _identity)[1]["text"]["encoder_sha256"]
    assert build_content(items, ITEMS, cfg, _identity)[1]["text"]["encoder_sha256"] == first
    make_tiny_text_encoder(folder, ITEMS["title"].to_list() * 5, vocab_size=60, seed=1)
    assert build_content(items, ITEMS, cfg, _identity)[1]["text"]["encoder_sha256"] != first


def test_content_meta_names_the_code_that_computed_the_features(
    tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meta (saved in the spec, and part of the resume fingerprint) records the code version, so a
    checkpoint made with features of older code is not resumed on features of newer code."""
    from recsys_cl.towers import content as content_module

    items = Vocab.from_values(ITEMS["item_id"], name="item_id")
    cfg = _cfg(("id", "text"), tiny_text)
    meta = build_content(items, ITEMS, cfg, _identity)[1]["text"]
    assert meta["code_version"] == content_module.code_version("text")
    monkeypatch.setattr(content_module, "CONTENT_CACHE_VERSION", content_module.CONTENT_CACHE_VERSION + 1)
    assert build_content(items, ITEMS, cfg, _identity)[1]["text"]["code_version"] != meta["code_version"]
