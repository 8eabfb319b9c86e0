"""Gates that can fail: a NaN or an infinity is a failure in every comparison."""

import inspect

import numpy as np
import pytest

from kdl import gates
from kdl.export.parity import compare
from tests.export.test_bundle import copy_bundle, load_checker, rehash

NAN, INF = float("nan"), float("inf")


@pytest.mark.once
def test_standalone_checker_holds_the_same_comparison():
    """verify_bundle.py imports numpy only, so it carries a copy: it must stay verbatim."""
    assert inspect.getsource(load_checker().out_of_tolerance) == \
        inspect.getsource(gates.out_of_tolerance)


@pytest.mark.once
def test_out_of_tolerance_fails_every_nonfinite_value():
    got = np.array([1.0, 1.0005, NAN, NAN, INF, INF, 1.0, -INF])
    exp = np.array([1.0, 1.0, 1.0, NAN, INF, 1.0, NAN, -INF])
    np.testing.assert_array_equal(gates.out_of_tolerance(got, exp, atol=1e-3),
                                  [False, False, True, True, True, True, True, True])
    assert gates.out_of_tolerance(1.1, 1.0, atol=0.05, rtol=0.1).tolist() is False
    assert gates.out_of_tolerance(1.2, 1.0, atol=0.05, rtol=0.1).tolist() is True
    assert gates.nonfinite_count(got) == 5


@pytest.mark.once
@pytest.mark.parametrize("value,limit,most,least", [
    (0.4, 0.5, True, False), (0.5, 0.5, True, True), (NAN, 0.5, False, False),
    (INF, 0.5, False, False), (-INF, 0.5, False, False), (0.4, NAN, False, False),
    (None, 0.5, False, False),
])
def test_scalar_limits_fail_on_nonfinite(value, limit, most, least):
    assert gates.at_most(value, limit) is most
    assert gates.at_least(value, limit) is least


@pytest.mark.once
@pytest.mark.parametrize("where", ["outputs", "reference"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_export_parity_fails_on_nonfinite_values(where, task):
    rng = np.random.default_rng(0)
    ref = rng.random((16, 3)).astype("float32")
    y = ref.argmax(-1) if task == "classification" else ref
    good = compare(ref, ref.copy(), y, task, {"max_abs_diff": 1e-4, "max_metric_drop": 0.01})
    assert good["passed"], good["failures"]
    out, bad_ref = ref.copy(), ref.copy()
    (out if where == "outputs" else bad_ref)[3, 1] = NAN
    (out if where == "outputs" else bad_ref)[5, 0] = INF
    r = compare(bad_ref, out, y, task, {"max_abs_diff": 1e-4, "max_metric_drop": 0.01})
    assert not r["passed"]
    assert any("2 of 48 values of the" in f and "NaN/inf" in f for f in r["failures"])
    assert r[f"nonfinite_{where}"] == 2


def _nan_tflite(tmp_path):
    """The tiny classifier with a NaN bias: the same tensors, every output NaN."""
    from tests.export.conftest import convert, tiny_model

    model = tiny_model()
    bias = model.layers[-1].bias
    bias.assign(np.full(bias.shape, NAN, "float32"))
    path = tmp_path / "nan.tflite"
    path.write_bytes(convert(model))
    return path


@pytest.mark.tf_only
def test_verify_bundle_fails_a_model_that_outputs_nan(good_bundle, tmp_path, capsys):
    import json

    from ai_edge_litert.interpreter import Interpreter

    b = copy_bundle(good_bundle, tmp_path)
    (b / "model_fp32.tflite").write_bytes(_nan_tflite(tmp_path).read_bytes())
    interp = Interpreter(model_path=str(b / "model_fp32.tflite"))
    contract = json.loads((b / "contract.json").read_text())
    entry = contract["files"]["model_fp32.tflite"]
    entry["inputs"][0]["index"] = int(interp.get_input_details()[0]["index"])
    entry["outputs"][0]["index"] = int(interp.get_output_details()[0]["index"])
    (b / "contract.json").write_text(json.dumps(contract))
    rehash(b, "model_fp32.tflite")
    code = load_checker().main([str(b)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "FAIL model_fp32.tflite" in err and "max |diff| nan" in err
    assert "3 of 3 values off" in err and "NaN/inf always fail" in err


@pytest.mark.tf_only
def test_write_bundle_refuses_a_model_that_outputs_nan(tiny_export, tmp_path):
    from kdl.export.bundle import write_bundle

    nan_file = _nan_tflite(tmp_path)
    with pytest.raises(ValueError, match=r"nan\.tflite gives 12 NaN/inf values on the 4 golden"):
        write_bundle(tmp_path / "bundle", {"tflite_fp32": nan_file}, tiny_export.raw[:4])
    assert not (tmp_path / "bundle").exists()


@pytest.mark.once
def test_compression_report_targets_fail_on_nan():
    from pipelines.stages.quantize import _score, _targets

    y = np.array([0, 1, 2, 0])
    pred = np.eye(3, dtype="float32")[y]
    assert _score("classification", y, pred)["accuracy"] == 1.0
    pred[1, 0] = NAN  # argmax of the rows would still give an accuracy of 0.75
    s = _score("classification", y, pred)
    assert np.isnan(s["accuracy"]) and s["nonfinite_outputs"] == 1
    rows = [{"variant": "dense fp32", "tflite_bytes": 100, "tflite_gzip_bytes": 90},
            {"variant": "dense int8 (PTQ)", "tflite_bytes": 25, "tflite_gzip_bytes": 20,
             "delta_pt": NAN}]
    met = {t["name"]: t["met"] for t in _targets(rows, "dense")}
    assert met == {"int8_size_ratio": True, "ptq_int8_drop_pt": False}
    rows[1]["delta_pt"] = -0.1
    assert all(t["met"] for t in _targets(rows, "dense"))
