"""Transfer learning from a recipe: `train.transfer` phases with per-group rates."""

import json

import keras
import numpy as np

from kdl.data import load_splits
from kdl.models import build_model
from kdl.optimizers import GroupedOptimizer
from pipelines.cli import main


def _kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def test_recipe_phases_with_param_groups(tmp_path, capsys):
    s = load_splits("digits", seed=0)
    keras.utils.set_random_seed(0)
    source = build_model("cnn", s.input_shape, 10, preset="tiny")
    source.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    source.fit(s.train.x[:256], s.train.y[:256], epochs=1, verbose=0)
    source.save(tmp_path / "source.keras")

    phases = ("[{epochs: 1, learning_rate: 0.01},"
              " {epochs: 1, learning_rate: 0.001, names: [conv_],"
              "  param_groups: [{match: '^conv_0/', lr_scale: 0},"
              "                 {match: '^conv_1/', lr_scale: 0.1}]}]")
    out = tmp_path / "out"
    assert main(["run", "digits_cnn", "--stages", "train", "--set", "tracking.enabled=false",
                 "--set", "train.verbose=0", "--set", f"output_dir={out}",
                 "--set", f"train.transfer.backbone={tmp_path / 'source.keras'}",
                 "--set", f"train.transfer.phases={phases}"]) == 0
    (run,) = (out / "digits_cnn").iterdir()
    report = json.loads((run / "transfer_phases.json").read_text())
    assert [p["trainable"] for p in report] == [[], ["conv_0", "conv_1"]]
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2

    trained = keras.saving.load_model(run / "model.keras")
    assert isinstance(trained.optimizer, GroupedOptimizer)
    assert trained.optimizer.groups[1] == {"match": "^conv_1/", "lr_scale": 0.1}
    # conv_0 opened but at rate 0, dense never opened: bit-identical; conv_1 trained.
    np.testing.assert_array_equal(_kernel(trained, "conv_0"), _kernel(source, "conv_0"))
    np.testing.assert_array_equal(_kernel(trained, "dense"), _kernel(source, "dense"))
    assert not np.allclose(_kernel(trained, "conv_1"), _kernel(source, "conv_1"))


def test_bad_transfer_config_is_named(capsys):
    assert main(["run", "digits_cnn", "--set",
                 "train.transfer.phases=[{epochs: 1, learning_rate: 0.01}]"]) == 2
    assert "need train.transfer.backbone" in capsys.readouterr().err
    assert main(["run", "digits_cnn", "--set", "train.param_groups=[{match: 'conv_(', "
                 "lr_scale: 0.1}]"]) == 2
    assert "is not a regular expression" in capsys.readouterr().err
    assert main(["run", "digits_cnn", "--set", "train.param_groups=[{lr_scale: 0.1}]"]) == 2
    assert "match is required" in capsys.readouterr().err
