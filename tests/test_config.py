"""Config: precedence, strictness, error messages."""

import pytest

from pipelines.config import ConfigError, ExperimentConfig, flatten, from_dict, load_config, to_dict


def test_precedence_defaults_recipe_override():
    default = ExperimentConfig()
    recipe = load_config("iris_mlp")
    assert recipe.data.name == "iris" and default.data.name == "digits"
    assert recipe.train.epochs == 60 and default.train.epochs == 30
    assert recipe.train.optimizer == default.train.optimizer  # not in the recipe: default
    both = load_config("iris_mlp", ["train.epochs=3", "model.params.units=[4, 4]"])
    assert both.train.epochs == 3
    assert both.model.params == {"units": [4, 4]}
    assert both.data.name == "iris"


def test_int_is_accepted_for_float_and_types_are_kept():
    cfg = from_dict({"train": {"learning_rate": 1, "clipnorm": None}})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.clipnorm is None


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["unknown key train.'epoch'", "Did you mean 'epochs'", "Allowed keys"]),
    ("trian.epochs=3", ["unknown key 'trian'", "'train'"]),
    ("train.epochs=abc", ["train.epochs", "expected int", "'abc'"]),
    ("train.epochs=2.5", ["train.epochs", "expected int"]),
    ("train.precision=fp16", ["train.precision", "not allowed", "mixed_float16"]),
    ("data.normalize=1", ["data.normalize", "not allowed", "'symmetric'"]),
    ("data.normalize=minmax", ["data.normalize", "not allowed", "'standardize'"]),
    ("model.name=resnt", ["model.name", "unknown model 'resnt'", "Available:"]),
    ("model.preset=huge", ["model.preset", "no preset 'huge'", "tiny"]),
    ("data.name=digit", ["data.name", "Did you mean 'digits'"]),
    ("train.schedule=cosin", ["train.schedule", "unknown schedule"]),
    ("export.formats=[tflite_fp33]", ["export.formats[0]", "Did you mean 'tflite_fp32'"]),
    ("export.thresholds={tflite_fp32: {max_abs: 1}}", ["unknown key 'max_abs'",
                                                       "max_abs_diff"]),
    ("data.val_fraction=0.9", ["val_fraction", "sum below 1"]),
    ("stages=[train, deploy]", ["stages[1]", "unknown stage 'deploy'"]),
    ("train.epochs", ["must look like key.path=value"]),
])
def test_bad_overrides_name_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("digits_cnn", [override])
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unknown_recipe_lists_available_and_close_matches():
    with pytest.raises(ConfigError) as err:
        load_config("digits_cn")
    assert "Did you mean 'digits_cnn'" in str(err.value)
    assert "iris_mlp" in str(err.value)


def test_csv_target_column_is_checked_before_any_work(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n")
    with pytest.raises(ConfigError, match="column 'lable' is not in t.csv. Did you mean 'label'"):
        load_config(None, ["data.name=csv", f"data.path={path}", "data.target=lable"])
    cfg = load_config(None, ["data.name=csv", f"data.path={path}", "data.target=label"])
    assert cfg.data.target == "label"


def test_round_trip_and_flatten():
    cfg = load_config("digits_cnn", ["train.epochs=7"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    flat = flatten(to_dict(cfg))
    assert flat["train.epochs"] == 7
    assert flat["train.early_stopping.patience"] == 6
    assert "train" not in flat
