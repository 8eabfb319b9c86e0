"""Convert SavedModels to `.tflite` in a process of its own (run by path).

`python _tflite_worker.py`: reads one JSON job per line on stdin, converts,
answers one JSON line on stdout (`{"ok": true}` or `{"error": "<the
converter's message>"}`), and serves the next job, so that TensorFlow starts
once per parent process, not once per file. The TFLite converter and its int8
calibrator are C++ that can crash the process (a segfault while calibrating a
recurrent loop, say); `kdl.export.formats` runs them here so that a crash is a
failed export with the converter's last words (faulthandler prints the Python
stack on stderr), not a dead pipeline. Imports TensorFlow and numpy only,
never Keras or kdl.

A job: `saved_model`, `out`, `allow_flex_ops`, `optimize` (dynamic range),
`float16`, `representative` (a `.npy` of calibration inputs: full int8),
`float_io` and `input_dtype` (`int8`, or `uint8` for raw pixels).
"""

import faulthandler
import json
import os
import sys

faulthandler.enable()


def convert(job: dict) -> bytes:
    import numpy as np
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(job["saved_model"])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if job.get("representative"):
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if job.get("allow_flex_ops"):
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    if job.get("optimize") or job.get("float16") or job.get("representative"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if job.get("float16"):
        converter.target_spec.supported_types = [tf.float16]
    if job.get("representative"):
        data = np.load(job["representative"])
        converter.representative_dataset = lambda: ([data[i:i + 1]] for i in range(len(data)))
        if not job.get("float_io"):
            converter.inference_input_type = (tf.uint8 if job.get("input_dtype") == "uint8"
                                              else tf.int8)
            converter.inference_output_type = tf.int8
    return converter.convert()


def main() -> int:
    answers = os.fdopen(os.dup(1), "w")  # the converter prints to stdout: keep ours apart
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            data = convert(job)
        except Exception as e:  # the converter raises ConverterError and plain exceptions
            answer = {"error": str(e)}
        else:
            with open(job["out"], "wb") as f:
                f.write(data)
            answer = {"ok": True}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
