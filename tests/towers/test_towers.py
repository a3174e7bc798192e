import numpy as np
import pytest
import torch

from recsys_cl.config import ItemTowerConfig, ModelConfig, UserTowerConfig
from recsys_cl.data.errors import DataError
from recsys_cl.features.spec import FeatureSpec
from recsys_cl.features.vocab import Vocab
from recsys_cl.towers.item_tower import CategoricalEncoder
from recsys_cl.towers.two_tower import build_two_tower


def _spec(num_items: int = 6, genres: bool = True) -> FeatureSpec:
    g = np.full((num_items, 2), -1)
    if genres:
        g[:, 0] = np.arange(num_items) % 3
        g[0, 1] = 1
    return FeatureSpec(
        items=Vocab.from_values(np.arange(num_items) * 10),
        users=Vocab.from_values(np.arange(4)),
        genres=Vocab(np.array(["a", "b", "c"]) if genres else np.array([], dtype=str)),
        item_genres=g, item_counts=np.ones(num_items, dtype=np.int64),
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("use_user_id", [False, True])
def test_shapes_and_normalisation(pooling: str, use_user_id: bool) -> None:
    torch.manual_seed(0)
    m = build_two_tower(_spec(), ModelConfig(embedding_dim=8),
                        UserTowerConfig(history_length=4, pooling=pooling, use_user_id=use_user_id,
                                        hidden_dims=(16,)),
                        ItemTowerConfig())
    hist = torch.tensor([[1, 2, -1, -1], [-1, -1, -1, -1], [5, 4, 3, 2]])
    u, v = m(hist, torch.tensor([0, -1, 3]), torch.arange(6))
    assert u.shape == (3, 8) and v.shape == (6, 8)
    assert torch.allclose(v.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.isfinite(u).all()  # a user with no history still gets a finite vector


def test_history_padding_is_ignored() -> None:
    torch.manual_seed(0)
    m = build_two_tower(_spec(), ModelConfig(embedding_dim=8),
                        UserTowerConfig(history_length=4, pooling="mean"), ItemTowerConfig())
    a = m.user_tower(torch.tensor([[1, 2, -1, -1]]))
    b = m.user_tower(torch.tensor([[1, 2, -1, -1]]))
    c = m.user_tower(torch.tensor([[2, 1, -1, -1]]))
    assert torch.allclose(a, b) and torch.allclose(a, c)  # mean pooling is order-free


def test_categorical_encoder_mean_of_values() -> None:
    enc = CategoricalEncoder(torch.tensor([[0, 1], [2, -1], [-1, -1]]), num_values=3, dim=2)
    with torch.no_grad():
        enc.embedding.weight[1:] = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = enc(torch.tensor([0, 1, 2]))
    # item 0: mean([1,0],[3,2]) = [2,1]; item 1: [5,5]; item 2: no values -> 0
    assert out.tolist() == [[2.0, 1.0], [5.0, 5.0], [0.0, 0.0]]


def test_categorical_without_genres_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="remove 'categorical'"):
        build_two_tower(_spec(genres=False), ModelConfig(), UserTowerConfig(), ItemTowerConfig())


def test_gradients_reach_both_towers() -> None:
    m = build_two_tower(_spec(), ModelConfig(embedding_dim=8), UserTowerConfig(history_length=3),
                        ItemTowerConfig(encoders=("id", "categorical")))
    u, v = m(torch.tensor([[1, 2, 3]]), None, torch.tensor([0, 4]))
    (u @ v.T).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert m.item_tower.encoders["categorical"].embedding.weight.grad.abs().sum() > 0
