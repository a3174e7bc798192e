import polars as pl
import torch

from recsys_cl.config import ItemTowerConfig, ModelConfig, UserTowerConfig
from recsys_cl.features.spec import FeatureSpec, build_feature_spec
from recsys_cl.towers.two_tower import build_two_tower


def _train() -> pl.DataFrame:
    return pl.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 20, 10], "timestamp": [1, 2, 3],
                         "row_order": [0, 1, 2]})


def _items() -> pl.DataFrame:
    # item 30 is in the table but never clicked in training (a cold item)
    return pl.DataFrame({"item_id": [10, 20, 30], "genres": [["a", "b"], ["b"], ["c", "a"]]})


def test_items_cover_table_and_catalogue_is_clicked_items() -> None:
    spec = build_feature_spec(_train(), _items())
    assert list(spec.items.ids) == [10, 20, 30]
    assert list(spec.item_counts) == [2, 1, 0]
    assert list(spec.catalogue) == [0, 1] and list(spec.catalogue_vocab.ids) == [10, 20]
    # genres per item, padded with -1: a=0, b=1, c=2
    assert spec.item_genres.tolist() == [[0, 1], [1, -1], [0, 2]]


def test_save_load_round_trip(tmp_path) -> None:
    spec = build_feature_spec(_train(), _items())
    back = FeatureSpec.load(spec.save(tmp_path / "f"))
    assert list(back.items.ids) == [10, 20, 30] and back.item_genres.tolist() == spec.item_genres.tolist()
    assert spec.train_clicks_until == 3 == back.train_clicks_until  # the last training click, kept with the model


def test_a_spec_saved_before_the_training_cutoff_was_recorded_loads_without_it(tmp_path) -> None:
    import json

    d = build_feature_spec(_train(), _items()).save(tmp_path / "f")
    info = json.loads((d / "spec.json").read_text())
    del info["train_clicks_until"]
    (d / "spec.json").write_text(json.dumps(info))
    assert FeatureSpec.load(d).train_clicks_until is None


def test_cold_item_embedding_comes_from_content_only() -> None:
    spec = build_feature_spec(_train(), _items())
    model = build_two_tower(spec, ModelConfig(embedding_dim=4), UserTowerConfig(history_length=2),
                            ItemTowerConfig(encoders=("id", "categorical")))
    id_enc = model.item_tower.encoders["id"]
    assert torch.all(id_enc(torch.tensor([2])) == 0)  # no ID signal for the cold item
    cat = model.item_tower.encoders["categorical"](torch.tensor([2]))
    want = torch.nn.functional.normalize(cat, dim=-1)
    assert torch.allclose(model.item_tower(torch.tensor([2])), want, atol=1e-6)
    # the shared table the user tower reads is zero there too
    assert torch.all(model.user_tower.item_embedding.weight[2] == 0)
