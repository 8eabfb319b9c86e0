"""The mobile bundle writer and the standalone verify-bundle checker."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdl.export import bundle as bundle_mod
from kdl.export.bundle import write_bundle
from kdl.export.litert import ExportFileError

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "pipelines" / "verify_bundle.py"

# Runs the checker file by path in a fresh interpreter, as an app's CI would,
# and proves it never imported Keras or TensorFlow.
_RUNNER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("verify_bundle", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
code = mod.main(sys.argv[2:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "kdl",
                                                              "jax", "torch"))
print("HEAVY=" + json.dumps(heavy))
sys.exit(code)
"""


def run_checker(bundle_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(CHECKER), str(bundle_dir)],
                          capture_output=True, text=True, env=env, timeout=120)
    heavy = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy and json.loads(heavy[0][6:]) == [], proc.stdout + proc.stderr
    return proc


def load_checker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_bundle_inproc", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_bundle(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def rehash(bundle: Path, name: str) -> None:
    """Record the file's current sha256 in the contract, to reach the checks behind it."""
    import hashlib

    contract = json.loads((bundle / "contract.json").read_text())
    contract["files"][name]["sha256"] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "contract.json").write_text(json.dumps(contract))


@pytest.mark.tf_only
def test_good_bundle_passes_standalone_checker(good_bundle):
    proc = run_checker(good_bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS model_fp32.tflite: 6 golden examples" in proc.stdout
    assert "PASS model_int8.tflite: 6 golden examples" in proc.stdout


_MODULE_RUNNER = """
import json, runpy, sys
sys.argv = ["pipelines", "verify-bundle", sys.argv[1]]
try:
    runpy.run_module("pipelines", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "kdl",
                                                              "jax", "torch"))
print("HEAVY=" + json.dumps(heavy))
sys.exit(code)
"""


@pytest.mark.tf_only
def test_cli_entry_point_is_as_light(good_bundle):
    """`python -m pipelines verify-bundle <dir>` (through the CLI) loads no Keras/TF."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _MODULE_RUNNER, str(good_bundle)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY=[]" in proc.stdout and "bundle OK" in proc.stdout


@pytest.mark.tf_only
def test_contract_describes_the_files(good_bundle, tiny_export):
    from ai_edge_litert.interpreter import Interpreter

    t = tiny_export
    contract = json.loads((good_bundle / "contract.json").read_text())
    assert sorted(p.name for p in good_bundle.iterdir()) == [
        "contract.json", "golden.json", "model_fp32.tflite", "model_int8.tflite"]
    assert contract["model"] == {**contract["model"], "name": "tiny", "version": "7",
                                 "source_run": "run-123", "task": "classification"}
    assert contract["labels"] == t.labels
    norm = contract["preprocessing"]["normalization"]
    np.testing.assert_array_equal(np.float32(norm["mean"]), t.normalizer.mean)
    np.testing.assert_array_equal(np.float32(norm["std"]), t.normalizer.std)

    interp = Interpreter(model_path=str(t.int8))
    interp.allocate_tensors()
    (d_in,), (d_out,) = interp.get_input_details(), interp.get_output_details()
    entry = contract["files"]["model_int8.tflite"]
    (c_in,), (c_out,) = entry["inputs"], entry["outputs"]
    assert c_in["dtype"] == "int8" and c_out["dtype"] == "int8"
    assert c_in["quantization"] == {"scale": float(d_in["quantization"][0]),
                                    "zero_point": int(d_in["quantization"][1])}
    assert c_out["quantization"]["zero_point"] == int(d_out["quantization"][1])
    assert c_in["shape"] == [1, 8] and c_out["shape"] == [1, 3]
    assert contract["files"]["model_fp32.tflite"]["inputs"][0]["quantization"] is None
    assert entry["size_bytes"] == t.int8.stat().st_size
    # The fp32 file matches the Keras model; int8 agrees on the class for most examples.
    assert contract["files"]["model_fp32.tflite"]["parity_vs_reference"]["max_abs_diff"] < 1e-5
    assert entry["parity_vs_reference"]["top1_agreement"] >= 4 / 6


@pytest.mark.tf_only
def test_golden_vectors_are_raw_inputs_and_keras_outputs(good_bundle, tiny_export):
    t = tiny_export
    golden = json.loads((good_bundle / "golden.json").read_text())
    np.testing.assert_array_equal(np.float32(golden["inputs"][0]["data"]), t.raw[:6])
    expected = np.float32(golden["expected"]["model_fp32.tflite"]["outputs"][0]["data"])
    oracle = t.model.predict(t.x[:6], verbose=0)
    np.testing.assert_allclose(expected, oracle, atol=1e-5)
    int8 = golden["expected"]["model_int8.tflite"]
    out_scale = json.loads((good_bundle / "contract.json").read_text())[
        "files"]["model_int8.tflite"]["outputs"][0]["quantization"]["scale"]
    assert int8["atol"] == pytest.approx(2 * out_scale)
    # Dequantized int8 outputs sit on the quantization grid and near the float ones.
    vals = np.float64(int8["outputs"][0]["data"]) / out_scale
    np.testing.assert_allclose(vals, np.round(vals), atol=1e-6)
    assert np.abs(np.float32(int8["outputs"][0]["data"]) - oracle).max() < 0.1


@pytest.mark.tf_only
def test_altered_golden_output_fails(good_bundle, tmp_path):
    b = copy_bundle(good_bundle, tmp_path)
    golden = json.loads((b / "golden.json").read_text())
    golden["expected"]["model_int8.tflite"]["outputs"][0]["data"][3][1] += 0.25
    (b / "golden.json").write_text(json.dumps(golden))
    proc = run_checker(b)
    assert proc.returncode == 1
    assert "PASS model_fp32.tflite" in proc.stdout + proc.stderr
    assert "FAIL model_int8.tflite" in proc.stderr
    assert "example 3, output 'output_0'" in proc.stderr


@pytest.mark.tf_only
def test_altered_normalization_fails(good_bundle, tmp_path):
    """The checker really applies the contract's preprocessing."""
    b = copy_bundle(good_bundle, tmp_path)
    contract = json.loads((b / "contract.json").read_text())
    contract["preprocessing"]["normalization"]["mean"][0] += 3.0
    (b / "contract.json").write_text(json.dumps(contract))
    code, lines = load_checker().verify_bundle(b)
    assert code == 1
    assert any(line.startswith("FAIL model_fp32.tflite") for line in lines)


@pytest.mark.tf_only
def test_truncated_tflite_is_malformed(good_bundle, tmp_path):
    b = copy_bundle(good_bundle, tmp_path)
    data = (b / "model_int8.tflite").read_bytes()
    (b / "model_int8.tflite").write_bytes(data[: len(data) // 2])
    proc = run_checker(b)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "model_int8.tflite: sha256 differs from the contract's" in proc.stderr
    rehash(b, "model_int8.tflite")
    proc = run_checker(b)
    assert proc.returncode == 2
    assert "MALFORMED: model_int8.tflite" in proc.stderr
    assert "cannot load it" in proc.stderr and "truncated" in proc.stderr


@pytest.mark.tf_only
def test_not_a_tflite_and_missing_files_are_malformed(good_bundle, tmp_path):
    checker = load_checker()
    b = copy_bundle(good_bundle, tmp_path)
    (b / "model_fp32.tflite").write_bytes(b"\x00" * 4 + b"ONNX" + b"\x00" * 100)
    rehash(b, "model_fp32.tflite")
    code, lines = checker.verify_bundle(b)
    assert code == 2 and "not a TFLite model (no TFL3 identifier" in "\n".join(lines)

    (b / "model_fp32.tflite").unlink()
    code, lines = checker.verify_bundle(b)
    assert code == 2 and "model_fp32.tflite: file declared in the contract is missing" in \
        "\n".join(lines)

    (b / "golden.json").unlink()
    code, lines = checker.verify_bundle(b)
    assert code == 2 and lines == [f"MALFORMED {b / 'golden.json'}: missing. A bundle holds "
                                   "contract.json and golden.json."]

    (b / "contract.json").write_text("{not json")
    assert checker.verify_bundle(b)[0] == 2
    assert checker.main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.tf_only
def test_contract_that_lies_about_quantization_is_malformed(good_bundle, tmp_path):
    b = copy_bundle(good_bundle, tmp_path)
    contract = json.loads((b / "contract.json").read_text())
    contract["files"]["model_int8.tflite"]["inputs"][0]["quantization"]["zero_point"] += 1
    (b / "contract.json").write_text(json.dumps(contract))
    code, lines = load_checker().verify_bundle(b)
    assert code == 2
    assert "quantized with scale=" in "\n".join(lines)


@pytest.mark.tf_only
def test_write_bundle_refuses_a_corrupt_tflite_and_leaves_nothing(tiny_export, tmp_path):
    bad = tmp_path / "model_fp32.tflite"
    bad.write_bytes(tiny_export.fp32.read_bytes()[:200])
    with pytest.raises(ExportFileError, match=r"model_fp32\.tflite: LiteRT cannot load it"):
        write_bundle(tmp_path / "bundle", {"tflite_fp32": bad}, tiny_export.raw[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_fp32.tflite"]


@pytest.mark.tf_only
def test_failed_rewrite_keeps_the_old_bundle(good_bundle, tiny_export, tmp_path, monkeypatch):
    b = copy_bundle(good_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in b.iterdir()}

    def boom(tmp, target):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod, "replace_dir", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(b, {"tflite_fp32": tiny_export.fp32}, tiny_export.raw[:2])
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp dir left


@pytest.mark.tf_only
def test_write_bundle_rejects_golden_inputs_of_the_wrong_width(tiny_export, tmp_path):
    with pytest.raises(ValueError, match="normalization has 8 values, golden inputs have last"):
        write_bundle(tmp_path / "b", {"tflite_fp32": tiny_export.fp32},
                     np.zeros((2, 5), "float32"), normalization=tiny_export.normalizer)
    with pytest.raises(ValueError, match="do not match model input"):
        write_bundle(tmp_path / "b", {"tflite_fp32": tiny_export.fp32},
                     np.zeros((2, 5), "float32"))
    assert not (tmp_path / "b").exists()


@pytest.mark.once
def test_write_bundle_names_a_missing_or_foreign_file(tmp_path):
    x = np.zeros((2, 8), "float32")
    with pytest.raises(ExportFileError, match=r"gone\.tflite: no such \.tflite file"):
        write_bundle(tmp_path / "b", {"tflite_fp32": tmp_path / "gone.tflite"}, x)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    with pytest.raises(ExportFileError, match=r"junk\.tflite: not a TFLite flatbuffer"):
        write_bundle(tmp_path / "b", {"tflite_int8": junk}, x)
    with pytest.raises(ValueError, match="tflite_files is empty"):
        write_bundle(tmp_path / "b", {}, x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.tflite"]


@pytest.mark.once
def test_checker_quantizes_like_tflite():
    """Round half away from zero, then clamp: numpy oracle on hand-picked values."""
    checker = load_checker()
    scale, zp = 0.5, -3
    x = np.array([0.25, -0.25, 0.74, -0.76, 1000.0, -1000.0, 0.0])
    q = checker.quantize(x, scale, zp, "int8")
    np.testing.assert_array_equal(q, np.array([1, -1, 1, -2, 127, -128, 0]) + np.array(
        [zp, zp, zp, zp, 0, 0, zp]))
    assert q.dtype == np.int8
    np.testing.assert_allclose(checker.dequantize(q[:4], scale, zp), [0.5, -0.5, 0.5, -1.0])


# ----------------------------------------------------------------------------- bad contracts
# Each case damages one thing in a good bundle; the checker must refuse it with
# exit 2 and one line naming the problem, before any model runs.


def _edit(name: str, fn):
    """A mutation that applies `fn` to the bundle's JSON file `name`."""
    def mutate(b: Path):
        d = json.loads((b / name).read_text())
        fn(d)
        (b / name).write_text(json.dumps(d))
    return mutate


def _contract(fn):
    return _edit("contract.json", fn)


def _golden(fn):
    return _edit("golden.json", fn)


def _rename_file(new: str):
    def fn(c):
        c["files"][new] = c["files"].pop("model_fp32.tflite")
    return fn


def _symlink_out(b: Path):
    outside = b.parent / "elsewhere.tflite"
    shutil.copyfile(b / "model_fp32.tflite", outside)
    (b / "linked.tflite").symlink_to(outside)
    _contract(_rename_file("linked.tflite"))(b)
    _golden(lambda g: g["expected"].__setitem__("linked.tflite",
                                                g["expected"].pop("model_fp32.tflite")))(b)


def _set(path: str, value):
    """`contract` key path like files/model_int8.tflite/inputs/0/quantization/scale."""
    def fn(d):
        keys = [int(k) if k.isdigit() else k for k in path.split("/")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def _raw_golden_text(old: str, new: str):
    def mutate(b: Path):
        text = (b / "golden.json").read_text()
        (b / "golden.json").write_text(text.replace(old, new, 1))
    return mutate


_I8 = "files/model_int8.tflite"
_EXP = "expected/model_fp32.tflite"
BAD_CONTRACTS = {
    "dotdot name": (_contract(_rename_file("../model_fp32.tflite")), "leaves the bundle"),
    "absolute name": (_contract(_rename_file("/tmp/model_fp32.tflite")), "leaves the bundle"),
    "symlink out": (_symlink_out, "is a link that leaves the bundle"),
    "no sha256": (_contract(lambda c: c["files"]["model_fp32.tflite"].pop("sha256")),
                  "missing key 'sha256'"),
    "bad sha256": (_contract(_set(f"{_I8}/sha256", "abc")), "64 lowercase hex digits"),
    "unknown block": (_contract(_set("extra", {})), "unknown key(s) 'extra'"),
    "wrong schema": (_contract(_set("schema", "kdl.bundle/9")), "this checker reads"),
    "zero scale": (_contract(_set(f"{_I8}/inputs/0/quantization/scale", 0.0)), "must be > 0"),
    "text scale": (_contract(_set(f"{_I8}/inputs/0/quantization/scale", "0.1")),
                   "must be int or float, got str"),
    "zero point out of int8": (_contract(_set(f"{_I8}/outputs/0/quantization/zero_point", 300)),
                               "must be <= 127"),
    "float zero point": (_contract(_set(f"{_I8}/outputs/0/quantization/zero_point", 1.5)),
                         "must be int, got float"),
    "negative index": (_contract(_set(f"{_I8}/inputs/0/index", -1)), "must be >= 0"),
    "wrong index": (_contract(_set(f"{_I8}/inputs/0/index", 99)),
                    "tensor index 0 in the model, 99 in the contract"),
    "text in normalization": (_contract(_set("preprocessing/normalization/mean/0", "a")),
                              "normalization.mean[0]: must be int or float, got str"),
    "zero std": (_contract(_set("preprocessing/normalization/std/2", 0)), "must be > 0"),
    "normalization width": (_contract(_set("preprocessing/normalization/mean", [0.0] * 3)),
                            "mean has 3 values, std 8"),
    "label count": (_contract(_set("labels", ["a", "b", "c", "d", "e"])),
                    "does not end in the 5 labels"),
    "bool shape": (_contract(_set(f"{_I8}/inputs/0/shape/1", True)), "got a boolean"),
    "huge atol": (_golden(_set(f"{_EXP}/atol", 1e9)), "atol: must be <="),
    "negative atol": (_golden(_set(f"{_EXP}/atol", -1e-4)), "atol: must be >= 0"),
    "text rtol": (_golden(_set(f"{_EXP}/rtol", "1e-4")), "rtol: must be int or float"),
    "huge rtol": (_golden(_set(f"{_EXP}/rtol", 3.0)), "rtol: must be <= 0.5"),
    "NaN golden": (_raw_golden_text('"data": [[', '"data": [[NaN, '),
                   "NaN is not a JSON number"),
    "inf golden": (lambda b: (_golden(_set(f"{_EXP}/outputs/0/data/0/0", 12345.5))(b),
                              _raw_golden_text("12345.5", "1e999")(b)),
                   "1 of 18 values are not finite"),
    "ragged golden": (_golden(_set("inputs/0/data/1", [1.0])), "not a numeric array"),
    "zero temperature": (_contract(_set("calibration", {"temperature": 0.0})), "must be > 0"),
    "NaN temperature": (_contract(_set("calibration", {"temperature": float("nan")})),
                        "NaN is not a JSON number"),
    "text temperature": (_contract(_set("calibration", {"temperature": "1.5"})),
                         "temperature: must be int or float, got str"),
    "unknown calibration key": (_contract(_set("calibration", {"temperature": 1.5, "t": 1})),
                                "unknown key(s) 't'"),
}


@pytest.mark.tf_only
def test_calibration_block_is_accepted(good_bundle, tmp_path, capsys):
    b = copy_bundle(good_bundle, tmp_path)
    _contract(_set("calibration", {"temperature": 1.7, "fitted_on": "validation split",
                                   "apply": "softmax(log(p) / temperature)"}))(b)
    assert load_checker().main([str(b)]) == 0, capsys.readouterr().err


@pytest.mark.tf_only
@pytest.mark.parametrize("case", sorted(BAD_CONTRACTS))
def test_malformed_contract_is_exit_2_in_one_line(case, good_bundle, tmp_path, capsys):
    mutate, message = BAD_CONTRACTS[case]
    b = copy_bundle(good_bundle, tmp_path)
    mutate(b)
    code = load_checker().main([str(b)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.tf_only
def test_malformed_after_loading_the_model_is_still_one_line(good_bundle, tmp_path):
    """LiteRT's own notices (XNNPACK delegate) must not precede the one-line error."""
    b = copy_bundle(good_bundle, tmp_path)
    _contract(_set(f"{_I8}/inputs/0/index", 99))(b)
    proc = run_checker(b)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines()
                                        if line.startswith("verify-bundle: bundle MALFORMED")]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
