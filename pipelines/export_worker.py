"""Export and verify in a TensorFlow-backend process.

`python -m pipelines.export_worker <request.json>` (KERAS_BACKEND=tensorflow):
reload `model.keras`, write every requested format into `out_dir`, run each
file back on the verification inputs and compare with the reference outputs
(the Keras model's, computed on the backend it was trained on). Writes
`report.json` into `out_dir`; exit 0 if every format passed, 1 if one missed its
thresholds, 2 if the export itself failed (message in the report's `error`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from kdl.io import atomic_write_json, file_sizes  # noqa: E402


def export_and_verify(request: dict[str, Any]) -> dict[str, Any]:
    import keras

    from kdl.export import FORMATS, compare, export, load_runner
    from kdl.export.formats import ExportError
    from kdl.export.litert import ExportFileError

    out_dir = Path(request["out_dir"])
    report: dict[str, Any] = {"formats": {}, "passed": False}
    try:
        model_path = Path(request["model"])
        if not model_path.is_file():
            raise ExportFileError(f"{model_path}: no model.keras in this run directory "
                                  "(did the train stage finish?)")
        try:
            model = keras.saving.load_model(model_path)
        except Exception as e:  # a truncated zip, a missing custom object, ...
            raise ExportFileError(f"{model_path}: cannot load ({type(e).__name__}: {e})") from None
        data = np.load(request["inputs"])
        x, y, reference = data["x"], data["y"], data["reference"]
        options = {f: dict(o) for f, o in request.get("options", {}).items()}
        if "tflite_int8" in request["formats"]:
            options.setdefault("tflite_int8", {})["representative"] = data["representative"]
        paths = export(model, out_dir, request["formats"], options)
        for fmt, path in paths.items():
            thresholds = {**FORMATS[fmt].thresholds, **request.get("thresholds", {}).get(fmt, {})}
            outputs = load_runner(fmt, path)(x)
            result = compare(reference, outputs, y, request["task"], thresholds)
            raw, zipped = file_sizes(path)
            result.update(file=path.name, size_bytes=raw, gzip_bytes=zipped,
                          thresholds=thresholds)
            report["formats"][fmt] = result
        report["passed"] = all(r["passed"] for r in report["formats"].values())
    except (ExportError, ExportFileError, ValueError) as e:
        report["error"] = str(e)
        if getattr(e, "details", None):  # the converter crashed: ConverterCrash.details
            report["crash"] = e.details
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    request = json.loads(Path(argv[0]).read_text())
    report = export_and_verify(request)
    if "error" in report:
        print(f"export failed: {report['error']}", file=sys.stderr)
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
