from pathlib import Path

import pytest
import torch

from recsys_cl.pretrain.config import SimCLRConfig
from recsys_cl.pretrain.simclr import (
    linear_probe_correct,
    load_encoder,
    same_class_hits,
    same_class_recall_at_k,
    save_encoder,
)
from recsys_cl.towers.image_encoder import ImageEncoder, ProjectionHead


@pytest.mark.parametrize("channels,widths,size", [(1, (8, 16), 28), (3, (8, 16, 32), 32)])
def test_encoder_and_head_shapes(channels: int, widths: tuple[int, ...], size: int) -> None:
    enc = ImageEncoder(channels, widths, blocks_per_stage=2)
    h = enc(torch.rand(5, channels, size, size))
    assert h.shape == (5, widths[-1]) and enc.embedding_dim == widths[-1]
    z = ProjectionHead(enc.embedding_dim, 16, 4)(h)
    assert z.shape == (5, 4)


def test_wrong_channels_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, H, W\), got \(2, 28, 28\)"):
        ImageEncoder(1, (8,))(torch.rand(2, 28, 28))


def test_integer_pixels_are_a_clear_error() -> None:
    """uint8 pixels straight from the data failed deep inside the first conv with 'expected scalar
    type Byte but found Float'."""
    enc = ImageEncoder(1, (4, 8))
    with pytest.raises(ValueError, match=r"ImageEncoder expects float pixels in \[0, 1\], got torch\.uint8; divide "
                                         r"by 255"):
        enc(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cfg = SimCLRConfig()
    enc = ImageEncoder(1, cfg.model.widths).eval()
    save_encoder(enc, cfg, tmp_path / "enc")
    again = load_encoder(tmp_path / "enc")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(enc(x), again(x))
    with pytest.raises(FileNotFoundError, match="encoder.pt"):
        load_encoder(tmp_path)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"found \['config.json'\]: that is a text encoder .*, not an image "
                                                r"encoder; point item_tower\.image\.pretrained at a pretrain_simclr"):
        load_encoder(tmp_path / "text")
    weights = tmp_path / "enc" / "encoder.pt"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(FileNotFoundError, match=r"encoder.pt / encoder_config.json do not load \(RuntimeError"):
        load_encoder(tmp_path / "enc")


def test_same_class_recall_hand_worked() -> None:
    import numpy as np

    # two tight clusters of 3 points; k=2 neighbours of each point are its cluster mates
    v = np.array([[1, 0], [0.99, 0.1], [0.98, -0.1], [0, 1], [0.1, 0.99], [-0.1, 0.98]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert same_class_recall_at_k(v, np.array([0, 0, 0, 1, 1, 1]), k=2) == 1.0
    assert same_class_recall_at_k(v, np.array([0, 1, 0, 1, 0, 1]), k=2) == pytest.approx(1 / 3)
    # per point: 0 has neighbours 1 (other class) and 2 (same); 1 has 0 and 2 (both other); ...
    assert same_class_hits(v, np.array([0, 1, 0, 1, 0, 1]), k=2).tolist() == [0.5, 0.0, 0.5, 0.5, 0.0, 0.5]


def test_linear_probe_correct_per_test_row() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    train_y, test_y = np.repeat([0, 1], 20), np.array([0, 1, 0, 1])
    train_x = np.eye(2)[train_y] * 3 + rng.normal(scale=0.1, size=(40, 2))
    test_x = np.eye(2)[test_y] * 3
    assert linear_probe_correct(train_x, train_y, test_x, test_y).tolist() == [True] * 4
    assert linear_probe_correct(train_x, train_y, test_x, 1 - test_y).tolist() == [False] * 4
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe_correct(train_x, np.zeros(40), test_x, test_y)
