"""Image runs through the CLI: bad image input is one line (exit 2) before any run exists;
the shapes_mobilenet recipe end to end (slow)."""

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "single" / "cat").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), "uint8")).save(tmp_path / "single/cat/a.png")
    for name in ("ok", "bad"):
        (tmp_path / "corrupt" / name).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), "uint8")).save(tmp_path / "corrupt/ok/a.png")
    (tmp_path / "corrupt" / "bad" / "a.jpg").write_bytes(b"")
    return tmp_path


MOBILE = ["--set", "model.name=mobilenet_v2", "--set", "data.name=digits"]


@pytest.mark.once
@pytest.mark.parametrize("args, words", [
    (["--set", "data.name=image_folder", "--set", "data.path={root}/empty"],
     ["has no class subfolders", "(it is empty)"]),
    (["--set", "data.name=image_folder", "--set", "data.path={root}/single"],
     ["single class ('cat')"]),
    (["--set", "data.name=image_folder", "--set", "data.path={root}/corrupt"],
     ["['bad']", "no usable image"]),
    (["--set", "data.augment=[{name: RandomFlp}]"], ["Did you mean 'RandomFlip'"]),
    (["--set", "data.augment=[{name: RandomZoom, factor: 0.1}]"],
     ["RandomZoom has no argument 'factor'"]),
    ([*MOBILE], ["takes raw pixels", "data.normalize=false"]),
    ([*MOBILE, "--set", "data.normalize=false", "--set", "stages=[train,quantize]"],
     ["quantize.qat=false"]),
    ([*MOBILE, "--set", "data.normalize=false", "--set", "model.params={weights: /no/w.h5}"],
     ["model.params.weights", "not a file"]),
    (["--set", "export.input_dtype=uint8"], ["data.normalize=false"]),
    (["--set", "data.image_size=[32]"], ["data.image_size must be [height, width]"]),
])
def test_bad_image_input_is_one_line_before_any_run(folders, args, words, capsys, tmp_path):
    out = tmp_path / "runs"
    argv = ["run", "digits_cnn", "--set", f"output_dir={out}",
            *[a.replace("{root}", str(folders)) for a in args]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for w in words:
        assert w in err, err
    assert not out.exists()  # nothing written: no run directory, no MLflow run


@pytest.mark.slow
@pytest.mark.tf_only
def test_shapes_mobilenet_recipe_end_to_end(tmp_path, capsys):
    """The recipe on a small generated folder (its own settings, fewer epochs): trains,
    prunes, quantizes, exports uint8-input int8, benches, bundles; predict reads it."""
    from kdl.data.shapes import write_shapes

    folder = write_shapes(tmp_path, per_class=12, image_size=48, classes=3)
    (folder / "circle" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    argv = ["run", "shapes_mobilenet", "--set", f"data.path={folder}",
            "--set", f"output_dir={tmp_path / 'runs'}",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "--set", "data.image_size=[48,48]", "--set", "train.epochs=2",
            "--set", "prune.epochs=1", "--set", "prune.frequency=1", "--set", "bench.budget_s=0.2",
            "--set", "bench.min_reps=5", "--set", "bench.batch=0", "--set", "data.cache=true"]
    assert main(argv) == 0
    (run_dir,) = (tmp_path / "runs" / "shapes_mobilenet").iterdir()
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["skipped"] == 1 and report["label_names"] == ["circle", "cross", "square"]
    assert (run_dir / "augmented_batch.png").stat().st_size > 1000
    contract = json.loads((run_dir / "bundle" / "contract.json").read_text())
    (int8,) = [f for f in contract["files"].values() if f["format"] == "tflite_int8"]
    assert int8["inputs"][0]["dtype"] == "uint8"
    assert contract["preprocessing"]["image"]["fit"] == "crop"
    assert contract["labels"] == ["circle", "cross", "square"]
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(folder / "square"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["predictions"]) == 12
    assert {p["top"][0]["label"] for p in result["predictions"]} <= set(contract["labels"])
