"""Where a full-int8 TFLite file departs from the fake-quant Keras model, tensor by tensor.

    KERAS_BACKEND=tensorflow python -m benchmarks.qat_parity [--epochs 4] [--qat-epochs 2]

Trains the tiny digits CNN as `tests/compress/test_qat.py` does (pruned to
50%, QAT fine-tuned), calibrates it, converts the stripped model to full int8
and runs the file in the LiteRT interpreter with every intermediate tensor
kept. Each quantized TFLite tensor is matched to the fake-quant model's
quantizer of the same shape, both are put on the TFLite tensor's int8 grid,
and the table shows the relative difference of the scales and how many
values differ by 0, 1 or more steps, end to end and "local" (that Keras
segment fed the TFLite tensor before it). The first tensor with a difference
is where the simulation departs.

Found with it (TensorFlow 2.21, LiteRT 2.3, XNNPACK): with float biases and
batch norm applied after the quantized conv, every Conv/Dense output
differed locally in 0.01-0.07% of values by one step (the int32 bias
rounding), and the ranges calibrated through the fake-quant graph (biases
already quantized) differed from the converter's by ~4e-6 relative, enough
to flip near-ties; the differences compounded to 1.2% of outputs one step
off and 0.1% two. Folding BN into the conv, quantizing biases with
`input_scale * weight_scale` and calibrating with float biases makes every
tensor equal: 0 values differ on the test split.
"""

from __future__ import annotations

import argparse
import tempfile

import keras
import numpy as np


def build(epochs: int, qat_epochs: int, seed: int = 0):
    from kdl.compress import ConstantSparsity, MagnitudePruner
    from kdl.compress.qat import quantize_aware
    from kdl.data import load_splits
    from kdl.models import build_model

    d = load_splits("digits")
    keras.utils.set_random_seed(seed)
    model = build_model("cnn", d.input_shape, d.num_outputs, preset="tiny")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(d.train.x, d.train.y, batch_size=64, epochs=epochs, verbose=0)
    pruner = MagnitudePruner(model, ConstantSparsity(0.5, 0, frequency=1000), exclude=["head"])
    pruner.update_masks(0.5)
    pruner.apply_masks()
    qat = quantize_aware(model)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    qat.fit(d.train.x, d.train.y, batch_size=64, epochs=qat_epochs, verbose=0,
            callbacks=[MagnitudePruner.keep_zeros(qat, exclude=["head"]).callback()])
    return d, model, qat


def compare(d, model, qat, workdir) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    from kdl.compress.qat import activation_qparams, calibrate, quantizers, strip_quantization
    from kdl.export import export
    from kdl.export.litert import quantize

    rep = d.train.x[:200]
    calibrate(qat, rep)
    stripped = strip_quantization(qat, model)
    path = export(stripped, workdir, ["tflite_int8"],
                  {"tflite_int8": {"representative": rep}})["tflite_int8"]
    x = d.test.x
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
    interp.allocate_tensors()
    scale, zp = inp["quantization"]
    interp.set_tensor(inp["index"], quantize(x, scale, zp, inp["dtype"]))
    interp.invoke()
    order = {}
    for op_i, op in enumerate(interp._get_ops_details()):
        for t in op["outputs"]:
            order[int(t)] = (op_i, op["op_name"])
    order[inp["index"]] = (-1, "INPUT")
    qs = quantizers(qat)
    outs = [q.output[0] if q.return_scale else q.output for q in qs]
    probe = keras.Model(qat.inputs, outs)
    keras_outs = [np.asarray(o) for o in probe.predict(x, verbose=0)]
    rows, tfl = [], {}
    for t in interp.get_tensor_details():
        if t["index"] not in order or not np.issubdtype(t["dtype"], np.integer):
            continue
        s, z = t["quantization"]
        if not s:
            continue
        got = interp.get_tensor(t["index"]).astype("int64")
        best = None
        for q, k in zip(qs, keras_outs, strict=True):
            if k.shape != got.shape:
                continue
            want = np.round(k / s).astype("int64") + z  # keras value on this tensor's grid
            steps = np.abs(want - got)
            if best is None or steps.mean() < best[1].mean():
                best = (q.name, steps)
        if best is None:
            continue
        name, steps = best
        tfl[name] = (got, s, z)
        q = next(q for q in qs if q.name == name)
        mine = float(activation_qparams(keras.ops.convert_to_tensor(q.min_val),
                                        keras.ops.convert_to_tensor(q.max_val))[0])
        rows.append({"op": order[t["index"]][0], "kind": order[t["index"]][1],
                     "tensor": t["name"][:48], "keras": name, "scale": s, "zp": z,
                     "rel": abs(mine / s - 1),
                     "n": steps.size, "eq": float(np.mean(steps == 0)),
                     "one": float(np.mean(steps == 1)), "more": float(np.mean(steps > 1)),
                     "max": int(steps.max())})
    rows.sort(key=lambda r: r["op"])
    # Local: feed each segment of the Keras model the TFLite tensor before it.
    names = [q.name for q in qs]
    for r in rows:
        i = names.index(r["keras"])
        r["local_more"] = r["local_one"] = float("nan")
        if i == 0 or names[i - 1] not in tfl:
            continue
        prev_q, s_prev, z_prev = tfl[names[i - 1]]
        prev = qs[i - 1].output  # (tensor, scale): the next layer quantizes its bias with it
        seg = keras.Model(list(prev) if qs[i - 1].return_scale else prev, outs[i])
        feed = keras.ops.convert_to_tensor((prev_q - z_prev).astype("float32") * s_prev)
        if qs[i - 1].return_scale:
            feed = [feed, keras.ops.convert_to_tensor(np.float32(s_prev))]
        k = keras.ops.convert_to_numpy(seg(feed, training=False))
        got, s, z = tfl[r["keras"]]
        steps = np.abs(np.round(k / s).astype("int64") + z - got)
        r["local_one"], r["local_more"] = float(np.mean(steps == 1)), float(np.mean(steps > 1))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    d, model, qat = build(a.epochs, a.qat_epochs, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(d, model, qat, tmp)
    print(f"{'op':>3} {'kind':<18} {'keras quantizer':<22} {'scale':>9} {'zp':>5} {'rel':>8} "
          f"{'equal':>7} {'1 step':>7} {'>1':>7} {'max':>4} {'local 1':>8} {'local>1':>8}")
    for r in rows:
        print(f"{r['op']:>3} {r['kind']:<18} {r['keras']:<22} {r['scale']:>9.5f} {r['zp']:>5} "
              f"{r['rel']:>8.1e} "
              f"{r['eq']:>7.4f} {r['one']:>7.4f} {r['more']:>7.4f} {r['max']:>4} "
              f"{r['local_one']:>8.5f} {r['local_more']:>8.5f}")


if __name__ == "__main__":
    main()
