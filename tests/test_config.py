from pathlib import Path

import pytest

from recsys_cl.config import ConfigError, RunConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    from recsys_cl.bench import BenchRunConfig

    cls = BenchRunConfig if path.name == "benchmark_candidates.yaml" else RunConfig  # the rest: run configs
    cfg = load_config(path, cls)
    assert isinstance(cfg, cls)


ABLATIONS = sorted((Path(__file__).parents[1] / "pipelines" / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_every_ablation_variant_loads(path: Path) -> None:
    import yaml

    variants = yaml.safe_load(path.read_text())
    assert variants, f"{path} holds no variants"
    base = CONFIGS[0].parent / "two_tower.yaml"
    # image variants name their encoder on the command line (see the file's header)
    given = ["item_tower.image.pretrained=runs:/<simclr_run_id>/encoder"]
    for name, overrides in variants.items():
        cfg = load_config(base, RunConfig, [*given, *overrides])
        assert isinstance(cfg, RunConfig), name
        # a shipped variant says what it runs: no setting it ignores (bar the encoder given above)
        assert [w for w in cfg.unused_settings() if not w.startswith("item_tower.image.pretrained")] == [], name


def test_defaults_without_file() -> None:
    cfg = load_config(None, RunConfig)
    assert cfg.split.kind == "leave_last_out"
    assert cfg.loss.temperature == 0.1


def test_override_types_and_nesting() -> None:
    cfg = load_config(None, RunConfig, ["train.epochs=3", "loss.temperature=0.1",
                                        "item_tower.encoders=[id]", "data.min_rating=4",
                                        "data.columns.rating=score"])
    assert cfg.train.epochs == 3 and cfg.loss.temperature == 0.1
    assert cfg.item_tower.encoders == ("id",)
    assert cfg.data.min_rating == 4.0 and cfg.data.columns.rating == "score"


def test_exponent_notation_without_a_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 3e-4 as the string '3e-4'; float fields accept it, in files and --set
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 3e-4\n")
    assert load_config(p, RunConfig).train.lr == 3e-4
    assert load_config(None, RunConfig, ["train.lr=1E-3", "loss.temperature=5e-2"]).train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"train\.lr must be a number, got '3e-4x'"):
        load_config(None, RunConfig, ["train.lr=3e-4x"])


def test_unknown_key_names_full_path(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("loss:\n  temprature: 0.1\n")
    with pytest.raises(ConfigError, match=r"'loss\.temprature'.*loss\.temperature"):
        load_config(p, RunConfig)


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="'trian'"):
        load_config(None, RunConfig, ["trian.epochs=3"])


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epochs=abc", r"train\.epochs must be an integer, got 'abc'"),
        ("train.epochs=0", r"train\.epochs must be >= 1"),
        ("loss.kind=hinge", r"loss\.kind must be one of \['softmax', 'debiased', 'triplet'\]"),
        ("loss.temperature=0", r"loss\.temperature must be in \(0, 10\]"),
        ("train.resume=maybe", r"train\.resume must be true or false"),
        ("split.kind=random", r"split\.kind must be one of"),
        ("negatives.in_batch=false", r"no negatives configured"),
        ("train.epochs", r"must look like section\.key=value"),
        # values that used to pass here and fail later, inside torch or after training
        ("train.lr=.nan", r"train\.lr must be a finite number > 0, got nan"),
        ("train.lr=.inf", r"train\.lr must be a finite number > 0, got inf"),
        ("train.weight_decay=-1", r"train\.weight_decay must be a finite number >= 0"),
        ("train.num_threads=-1", r"train\.num_threads must be >= 0"),
        ("eval.ks=[0]", r"eval\.ks must be a non-empty list of list lengths >= 1.*got \[0\]"),
        ("eval.ks=[]", r"eval\.ks must be a non-empty list"),
        ("eval.ks=[10,20,10]", r"eval\.ks lists \[10\] more than once.*got \[10, 20, 10\], e\.g\. use \[10, 20\]"),
        ("eval.batch_size=0", r"eval\.batch_size must be >= 1"),
        ("eval.head_share=1", r"eval\.head_share must be in \(0, 1\).*got 1"),
        ("eval.head_share=0", r"eval\.head_share must be in \(0, 1\).*got 0"),
        ("item_tower.dropout=2", r"item_tower\.dropout must be in \[0, 1\), got 2"),
        ("user_tower.hidden_dims=[32, 0]", r"user_tower\.hidden_dims entries .* must be >= 1, got \[32, 0\]"),
        ("item_tower.hidden_dims=[0]", r"item_tower\.hidden_dims entries"),
        ("item_tower.fold_in_step=-1", r"item_tower\.fold_in_step must be a finite number >= 0 \(0 = off\), got -1"),
        ("item_tower.fold_in_step=.nan", r"item_tower\.fold_in_step must be a finite number >= 0"),
        ("item_tower.fold_in_method=avg", r"item_tower\.fold_in_method must be one of \['auto', 'sum', 'fit'\], "
                                          r"got 'avg'"),
        ("tracking.experiment=''", r"tracking\.experiment must be a name, got an empty string"),
        ("tracking.registered_model_name=''", r"tracking\.registered_model_name must be a name or null"),
        ("baselines.ease_lambdas=[-1]", r"baselines\.ease_lambdas must be a non-empty list of L2 strengths > 0"),
        ("baselines.ease_lambdas=[]", r"baselines\.ease_lambdas must be a non-empty list"),
        ("baselines.itemknn_k=[0]", r"baselines\.itemknn_k must be a non-empty list of neighbour counts >= 1"),
        # values that passed here and then crashed after the MLflow run opened (or wrote into the cwd)
        ("loss.streaming_buckets=0", r"loss\.streaming_buckets must be in \[1, 2\*\*32\].*got 0"),
        ("loss.streaming_hashes=0", r"loss\.streaming_hashes must be >= 1, got 0"),
        ("loss.streaming_buckets=4294967296", r"loss\.streaming_buckets x loss\.streaming_hashes = 4294967296 x 2 "
                                              r"buckets need 96\.0 GiB .* over the 4 GiB allowed"),
        ("loss.margin=.nan", r"loss\.margin must be a finite number >= 0, got nan"),
        ("loss.logq_weight=.nan", r"loss\.logq_weight must be a number in \[0, 1\] \(1 = full logQ correction, "
                                  r"0 = none\), got nan; set it to e\.g\. 0\.5"),
        ("loss.logq_weight=-0.5", r"loss\.logq_weight must be a number in \[0, 1\] .*got -0\.5"),
        ("loss.logq_weight=1.5", r"loss\.logq_weight must be a number in \[0, 1\] .*got 1\.5"),
        ("loss.logq_weight=.inf", r"loss\.logq_weight must be a number in \[0, 1\] .*got inf"),
        ("negatives.popularity_alpha=.nan", r"negatives\.popularity_alpha must be a finite number >= 0 .*got nan"),
        ("negatives.popularity_alpha=-1", r"negatives\.popularity_alpha must be a finite number >= 0 .*got -1"),
        ("index.embed_batch_size=0", r"index\.embed_batch_size must be >= 1 .*got 0"),
        ("index.embed_batch_size=-5", r"index\.embed_batch_size must be >= 1 .*got -5"),
        ("index.seed=-1", r"index\.seed must be an integer in \[0, 2147483647\], got -1"),
        ("candidates.seed=-1", r"candidates\.seed must be an integer in \[0, 2147483647\], got -1"),
        ("train.seed=-1", r"train\.seed must be an integer in \[0, 2147483647\], got -1"),
        ("index.seed=2147483648", r"index\.seed must be an integer in \[0, 2147483647\], got 2147483648"),
        ("candidates.index_root=''", r"candidates\.index_root must name a folder, got an empty string"),
        ("candidates.output_dir=' '", r"candidates\.output_dir must name a folder, got an empty string"),
        ("candidates.index_dir=''", r"candidates\.index_dir must name an index folder or be null"),
        ("index.output_dir=''", r"index\.output_dir must name a folder, got an empty string"),
        ("train.checkpoint_dir=''", r"train\.checkpoint_dir must name a folder, got an empty string"),
        ("item_tower.cache_dir=''", r"item_tower\.cache_dir must name a folder or be null"),
        ("data.items_path=''", r"data\.items_path must name an item table file or be null"),
        ("data.min_rating=.nan", r"data\.min_rating must be a finite number or null"),
        ("item_tower.fold_in_step=.inf", r"item_tower\.fold_in_step must be a finite number >= 0"),
        ("user_tower.history_length=100000000", r"user_tower\.history_length must be in \[1, 10000\] .*got 100000000"),
        ("user_tower.history_length=0", r"user_tower\.history_length must be in \[1, 10000\]"),
        ("negatives.num_sampled=100000000", r"negatives\.num_sampled must be in \[1, 65536\] \(negatives drawn per "
                                            r"batch; .*\), got 100000000; set it to e\.g\. 1024$"),
        ("negatives.num_sampled=0", r"negatives\.num_sampled must be in \[1, 65536\]"),
        ("baselines.ease_lambdas=[10, .nan]", r"baselines\.ease_lambdas must be a non-empty list of L2 strengths"),
        ("baselines.models=[ease,ease]", r"baselines\.models names ease more than once, got \['ease', 'ease'\]; "
                                         r"give each baseline once"),
    ],
)
def test_bad_values_are_rejected_with_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, RunConfig, [override])


def test_cross_field_check_debiased_needs_cosine() -> None:
    with pytest.raises(ConfigError, match="model.normalize=true"):
        load_config(None, RunConfig, ["loss.kind=debiased", "model.normalize=false"])


def test_all_items_catalogue_is_for_warm_splits_only() -> None:
    with pytest.raises(ConfigError, match=r"eval\.catalogue=all_items does not apply to split\.kind=cold_start.*"
                                          r"use split\.kind=temporal with eval\.catalogue=all_items"):
        load_config(None, RunConfig, ["split.kind=cold_start", "eval.catalogue=all_items"])
    cfg = load_config(None, RunConfig, ["split.kind=temporal", "eval.catalogue=all_items"])
    assert cfg.eval.catalogue == "all_items"
    with pytest.raises(ConfigError, match=r"eval\.catalogue must be one of \['train_items', 'all_items'\], got 'ev"):
        load_config(None, RunConfig, ["eval.catalogue=every"])


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, RunConfig, ["train.epochs=7", "user_tower.hidden_dims=[32]"])
    with pytest.raises(Exception):
        cfg.train.epochs = 3  # type: ignore[misc]
    p = tmp_path / "dump.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p, RunConfig) == cfg


def test_flat_dict_has_dotted_keys() -> None:
    flat = load_config(None, RunConfig).to_flat_dict()
    assert flat["loss.temperature"] == 0.1 and flat["data.columns.user_id"] == "user_id"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", RunConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(bad, RunConfig)
    message = str(err.value)  # one line: the problem, where, and what was open since where
    assert "\n" not in message and "<unicode string>" not in message
    assert "expected ',' or ']', but got '<stream end>' at line 3, column 1" in message
    assert "(while parsing a flow sequence from line 2, column 9)" in message
    bad.write_text("data:\n  path: a: b\n")
    with pytest.raises(ConfigError, match=r"mapping values are not allowed here at line 2, column 10; fix"):
        load_config(bad, RunConfig)


def test_alias_without_a_registered_model_is_rejected_before_training() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.set_alias='champion'.*registered_model_name is null"):
        load_config(None, RunConfig, ["tracking.registered_model_name=null", "tracking.set_alias=champion"])
    cfg = load_config(None, RunConfig, ["tracking.set_alias=champion"])  # the default name registers
    assert cfg.tracking.registered_model_name and cfg.tracking.set_alias == "champion"


def test_config_path_that_is_a_directory_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; pass --config with a YAML file"):
        load_config(tmp_path, RunConfig)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x80\x81\xff\xfe")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(invalid start byte at byte 0\)"):
        load_config(binary, RunConfig)


@pytest.mark.parametrize("text", ["", "\n\n", "# every setting commented out\n# train:\n#   epochs: 2\n", "---\n"])
def test_an_empty_config_file_is_refused_not_read_as_all_defaults(tmp_path: Path, text: str) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"config file '.*empty\.yaml' is empty \(no settings, only comments or "
                                          r"blank lines\); omit --config for the defaults, or give a YAML mapping"):
        load_config(p, RunConfig, ["train.epochs=2"])


def test_null_section_in_yaml_takes_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train: null\n")
    assert load_config(p, RunConfig).train == load_config(None, RunConfig).train  # null section = defaults
    assert load_config(p, RunConfig, ["train.epochs=2"]).train.epochs == 2


def test_a_bad_yaml_value_in_an_override_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, RunConfig, ["item_tower.encoders=[id,categorical"])
    assert "\n" not in str(info.value) and "expected ',' or ']'" in str(info.value)


@pytest.mark.parametrize("text, match", [
    ("train:\n  epochs: 0\n  epochs: 1\n", r"gives train\.epochs twice, on lines 2 and 3; .*delete one of them"),
    ("train:\n  epochs: 2\nloss:\n  kind: softmax\ntrain:\n  lr: 0.1\n",
     r"gives train twice, on lines 1 and 5; .*merge the two sections into one"),
    ("item_tower:\n  text:\n    max_length: 8\n  text: {max_length: 16}\n",
     r"gives item_tower\.text twice, on lines 2 and 4"),
    ("train: {epochs: 1, epochs: 2}\n", r"gives train\.epochs twice, on line 1;"),
])
def test_a_key_given_twice_in_a_file_is_refused_with_its_lines(tmp_path: Path, text: str, match: str) -> None:
    """PyYAML keeps the last of two same keys silently: epochs 0 then 1 trained 1 epoch, no word said."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"^config file '.*c\.yaml' " + match) as info:
        load_config(p, RunConfig)
    assert "\n" not in str(info.value)


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  <<: {epochs: 2, lr: 0.01}\n  epochs: 3\n")  # a merge is meant to be overridden
    cfg = load_config(p, RunConfig)
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01


def test_a_key_given_twice_in_an_override_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"override 'train=\{epochs: 1, epochs: 2\}' gives train\.epochs twice"):
        load_config(None, RunConfig, ["train={epochs: 1, epochs: 2}"])


def test_a_pretrained_encoder_outside_the_encoders_is_reported_as_unused() -> None:
    from recsys_cl.config import RunConfig, load_config

    cfg = load_config(None, RunConfig, overrides=["item_tower.image.pretrained=runs:/abc/encoder"])
    assert cfg.unused_settings() == [
        "item_tower.image.pretrained is set (runs:/abc/encoder) but item_tower.encoders=['id', 'categorical'] "
        "has no 'image', so it is not used; add image to item_tower.encoders to use it"]
    used = load_config(None, RunConfig, overrides=["item_tower.image.pretrained=runs:/abc/encoder",
                                                   "item_tower.encoders=[id,image]"])
    assert used.unused_settings() == [] and RunConfig().unused_settings() == []


def test_logq_weight_defaults_to_the_full_correction_and_takes_the_closed_unit_interval() -> None:
    assert RunConfig().loss.logq_weight == 1.0
    assert load_config(CONFIGS[0].parent / "two_tower.yaml").loss.logq_weight == 1.0
    for w in (0, 0.25, 1):
        assert load_config(None, RunConfig, [f"loss.logq_weight={w}"]).loss.logq_weight == w


def test_a_logq_weight_without_a_logq_correction_is_reported_as_unused() -> None:
    cfg = load_config(None, RunConfig, ["loss.logq=none", "loss.logq_weight=0.5"])
    assert cfg.unused_settings() == [
        "loss.logq_weight is set (0.5) but loss.logq=none, so it is not used; "
        "set loss.logq=counting or loss.logq=streaming to weight the correction"]
    triplet = load_config(None, RunConfig, ["loss.kind=triplet", "loss.logq_weight=0.5"])
    assert triplet.unused_settings() == [
        "loss.logq=counting with loss.logq_weight=0.5 is set but loss.kind=triplet scores raw cosines and applies "
        "no logQ correction, so it is not used; set loss.logq=none to say so, or loss.kind=softmax or "
        "loss.kind=debiased to use it"]
    for used in (["loss.logq_weight=0.5"], ["loss.logq=streaming", "loss.logq_weight=0"], ["loss.logq=none"],
                 ["loss.kind=triplet", "loss.logq=none"]):
        assert load_config(None, RunConfig, used).unused_settings() == [], used


def test_a_triplet_loss_with_the_default_logq_is_told_its_correction_is_unused() -> None:
    """The default loss.logq=counting does nothing under loss.kind=triplet (raw cosine scores): the run
    is warned, rather than logged and tagged as logQ-corrected."""
    warnings = load_config(None, RunConfig, ["loss.kind=triplet"]).unused_settings()
    assert warnings == ["loss.logq=counting is set but loss.kind=triplet scores raw cosines and applies no logQ "
                        "correction, so it is not used; set loss.logq=none to say so, or loss.kind=softmax or "
                        "loss.kind=debiased to use it"]


def test_serving_runs_get_their_own_experiment() -> None:
    t = load_config(None, overrides=["tracking.experiment=exp"]).tracking
    assert (t.for_serving().experiment, t.experiment) == ("exp_serving", "exp")
    t = load_config(None, overrides=["tracking.serving_experiment=nightly_runs"]).tracking
    assert t.for_serving().experiment == "nightly_runs" and t.for_serving().for_serving() == t.for_serving()
    with pytest.raises(ConfigError, match=r"tracking\.serving_experiment must be a name or null, got an empty"):
        load_config(None, overrides=["tracking.serving_experiment=' '"])


@pytest.mark.parametrize("override, first, second, column", [
    ("data.columns.user_id=item_id", "data.columns.user_id", "data.columns.item_id", "item_id"),
    ("data.columns.rating=timestamp", "data.columns.timestamp", "data.columns.rating", "timestamp"),
])
def test_two_column_keys_naming_one_column_are_refused(override: str, first: str, second: str, column: str) -> None:
    """One file column read as both the user and the item (a typo) trained silently on user == item."""
    with pytest.raises(ConfigError, match=rf"^{first} and {second} both name the column '{column}'; each must "
                                          r"name its own column of the click log"):
        load_config(None, RunConfig, ["data.format=csv", override])
