import pytest
import torch

from recsys_cl.features.image import SimCLRTransform
from recsys_cl.pretrain.config import AugmentConfig


@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_keep_shape_and_range(channels: int) -> None:
    t = SimCLRTransform(AugmentConfig(), channels, (28, 28))
    x = torch.rand(8, channels, 28, 28)
    v1, v2 = t(x, seed=0)
    assert v1.shape == v2.shape == x.shape
    assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0
    assert not torch.equal(v1, v2)  # the two views are augmented independently


def test_colour_ops_only_for_colour_images() -> None:
    names1 = [type(m).__name__ for m in SimCLRTransform(AugmentConfig(), 1, (28, 28)).augment.children()]
    names3 = [type(m).__name__ for m in SimCLRTransform(AugmentConfig(), 3, (28, 28)).augment.children()]
    assert "RandomGrayscale" not in names1 and "ColorJitter" not in names1
    assert {"RandomGrayscale", "ColorJitter", "RandomGaussianBlur", "RandomResizedCrop"} <= set(names3)


def test_same_seed_same_views_and_global_rng_untouched() -> None:
    t = SimCLRTransform(AugmentConfig(), 1, (28, 28))
    x = torch.rand(6, 1, 28, 28)
    torch.manual_seed(123)
    a1, a2 = t(x, seed=7)
    after = torch.rand(1)
    torch.manual_seed(123)
    b1, b2 = t(x, seed=7)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert torch.equal(after, torch.rand(1))  # seeded calls do not consume the global RNG
    c1, _ = t(x, seed=8)
    assert not torch.equal(a1, c1)


@pytest.mark.parametrize("bad", [torch.rand(2, 28, 28), torch.rand(2, 3, 28, 28), torch.rand(2, 1, 32, 32)])
def test_bad_shape_is_a_clear_error(bad: torch.Tensor) -> None:
    t = SimCLRTransform(AugmentConfig(), 1, (28, 28))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 28, 28\), got"):
        t(bad)


def test_uint8_is_rejected() -> None:
    t = SimCLRTransform(AugmentConfig(), 1, (28, 28))
    with pytest.raises(ValueError, match="divide uint8 pixels by 255"):
        t(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
