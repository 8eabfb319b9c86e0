"""MLP options: BatchNorm before or after the activation, dropout last."""

import pytest

from kdl.models import build_model


@pytest.mark.parametrize("position,order", [
    ("before", ["dense_0", "bn_0", "act_0", "dropout_0"]),
    ("after", ["dense_0", "act_0", "bn_0", "dropout_0"]),
])
def test_batch_norm_position(position, order):
    model = build_model("mlp", (4,), 3, units=(8,), dropout=0.1, batch_norm=True,
                        norm_position=position)
    names = [layer.name for layer in model.layers if layer.name.endswith("_0")]
    assert names == order
    assert (model.get_layer("dense_0").bias is None) == (position == "before")


def test_bad_position_is_rejected():
    with pytest.raises(ValueError, match="norm_position"):
        build_model("mlp", (4,), 3, batch_norm=True, norm_position="middle")


def test_regression_head_is_linear_float32():
    model = build_model("mlp", (4,), 2, task="regression", preset="tiny")
    head = model.get_layer("head")
    assert head.activation.__name__ == "linear" and head.dtype_policy.name == "float32"
