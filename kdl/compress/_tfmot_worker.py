"""tensorflow-model-optimization jobs, run as a script in a TF_USE_LEGACY_KERAS=1 process.

Started by `kdl.compress.tfmot_engine`; never imported by a Keras 3 process
(importing tensorflow_model_optimization switches `tf.keras` to tf_keras for the
whole process). It imports nothing from kdl. Usage: `python _tfmot_worker.py job_dir`
where `job_dir/job.json` describes the job and `job_dir/arrays.npz` holds the
weights (`w0`, `w1`, ...) and data (`x`, `y`, `rep`). Results are written to
`job_dir/result.json`, `job_dir/weights.npz` and, for QAT, `job_dir/model.tflite`.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

keras = tf.keras


def build(spec):
    model = keras.Sequential(name="tfmot_model")
    model.add(keras.Input(shape=tuple(spec["input_shape"])))
    for layer in spec["layers"]:
        model.add(keras.layers.deserialize({"class_name": layer["class_name"],
                                            "config": layer["config"]}))
    return model


class KeepZeros(keras.callbacks.Callback):
    """Re-zeroes every kernel's pruned weights after each training step.

    The prune-preserving scheme masks only the kernels it fake-quantizes; tfmot's
    `LayerReLUQuantize` transform gives a Conv2D/Dense followed by a separate ReLU
    layer a no-op quantize config, so that kernel would drift away from zero.
    """

    def __init__(self, qat_model):
        super().__init__()
        # The variables: a QuantizeWrapper's `layer.kernel` is the fake-quantized tensor.
        self.kernels = [(v, tf.cast(tf.not_equal(v, 0), v.dtype))
                        for v in qat_model.trainable_weights
                        if v.name.split("/")[-1].startswith("kernel")]

    def on_train_batch_end(self, batch, logs=None):
        for kernel, mask in self.kernels:
            kernel.assign(kernel * mask)


def schedule(cfg):
    S = tfmot.sparsity.keras
    kw = dict(cfg["kwargs"])
    return S.ConstantSparsity(**kw) if cfg["name"] == "constant" else S.PolynomialDecay(**kw)


def main(job_dir):
    with open(os.path.join(job_dir, "job.json")) as fh:
        job = json.load(fh)
    arrays = np.load(os.path.join(job_dir, "arrays.npz"))
    model = build(job["spec"])
    n_weights = len([k for k in arrays.files if k.startswith("w")])
    model.set_weights([arrays[f"w{i}"] for i in range(n_weights)])
    tf.keras.utils.set_random_seed(job.get("seed", 0))
    x, y = arrays["x"], arrays["y"]
    result = {}
    if job["task"] == "prune":
        pruned = tfmot.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=schedule(job["schedule"]))
        pruned.compile(keras.optimizers.Adam(job["learning_rate"]), job["loss"])
        pruned.fit(x, y, batch_size=job["batch_size"], epochs=job["epochs"], verbose=0,
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        out = tfmot.sparsity.keras.strip_pruning(pruned)
        np.savez(os.path.join(job_dir, "weights.npz"),
                 **{f"w{i}": w for i, w in enumerate(out.get_weights())})
    elif job["task"] == "quantize":
        Q = tfmot.quantization.keras
        callbacks = []
        if job.get("preserve_sparsity", False):
            # Prune-preserving QAT: the weight quantizers keep each kernel's zeros.
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat = Q.quantize_apply(Q.quantize_annotate_model(model), scheme)
            callbacks.append(KeepZeros(qat))
        else:
            qat = Q.quantize_model(model)
        qat.compile(keras.optimizers.Adam(job["learning_rate"]), job["loss"],
                    metrics=["accuracy"])
        qat.fit(x, y, batch_size=job["batch_size"], epochs=job["epochs"], verbose=0,
                callbacks=callbacks)
        converter = tf.lite.TFLiteConverter.from_keras_model(qat)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        rep = arrays["rep"]
        converter.representative_dataset = lambda: ([rep[i:i + 1]] for i in range(len(rep)))
        if not job.get("float_io", False):
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        path = os.path.join(job_dir, "model.tflite")
        with open(path + ".tmp", "wb") as fh:
            fh.write(converter.convert())
        os.replace(path + ".tmp", path)
        result["tflite"] = path
    else:
        raise ValueError(f"unknown tfmot job {job['task']!r}")
    with open(os.path.join(job_dir, "result.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1])
