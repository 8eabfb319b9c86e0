"""The ONNX format and the Flex-op check of the TFLite converters."""

import keras
import numpy as np
import pytest

from kdl.export import ExportError, export, load_runner
from kdl.export.litert import ExportFileError, LiteRTRunner


def flex_model(op):
    """Dense after an op that TFLite builtins lack (a Lambda: in-memory only)."""
    inp = keras.Input((8,))
    return keras.Model(inp, keras.layers.Dense(3)(keras.layers.Lambda(op)(inp)))


@pytest.mark.tf_only
def test_onnx_export_matches_keras(tiny_export, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx format needs onnxruntime")
    model = keras.saving.load_model(tiny_export.keras_path)  # a reloaded model, as in export
    path = export(model, tmp_path, ["onnx"])["onnx"]
    assert path.name == "model.onnx" and path.stat().st_size > 0
    x = tiny_export.x
    got = load_runner("onnx", path)(x)
    np.testing.assert_allclose(got, tiny_export.model.predict(x, verbose=0), atol=1e-5)

    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ExportFileError, match=r"model\.onnx: onnxruntime cannot load it"):
        load_runner("onnx", path)
    with pytest.raises(ExportError, match="format 'onnx' takes no option 'float_io'"):
        export(model, tmp_path, ["onnx"], {"onnx": {"float_io": True}})


@pytest.mark.tf_only
def test_flex_op_check_names_the_ops(tmp_path):
    model = flex_model(lambda x: keras.ops.cumprod(x, axis=-1))
    with pytest.raises(ExportError) as err:
        export(model, tmp_path, ["tflite_fp32"])
    msg = str(err.value)
    assert "model_fp32.tflite: the model needs TensorFlow ops that TFLite builtins lack " \
           "(Cumprod)" in msg
    assert "export.allow_flex_ops=true" in msg
    assert not (tmp_path / "model_fp32.tflite").exists()

    # Allowed by the recipe: the file converts with a Flex op in it, and the plain LiteRT
    # interpreter (no Flex delegate, as in an app without select-tf-ops) refuses it.
    path = export(model, tmp_path, ["tflite_fp32"],
                  {"tflite_fp32": {"allow_flex_ops": True}})["tflite_fp32"]
    assert b"FlexCumprod" in path.read_bytes()
    with pytest.raises(ExportFileError, match="Select TensorFlow op"):
        LiteRTRunner(path)


@pytest.mark.tf_only
def test_ops_without_any_tflite_kernel_are_named(tmp_path):
    model = flex_model(lambda x: keras.ops.erfinv(keras.ops.tanh(x)))
    with pytest.raises(ExportError, match=r"no kernel for, not even with Flex ops \(Erfinv\)"):
        export(model, tmp_path, ["tflite_fp32"], {"tflite_fp32": {"allow_flex_ops": True}})
