"""Load every `<name>.keras` of a folder and compare with `<name>.npz` outputs.

Run as `KERAS_BACKEND=<b> python -m kdl.testing.crossload <folder>`; prints
one JSON line `{name: "ok" | error}`.
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

import kdl.models  # noqa: F401  (registers every custom object)


def main(folder: str) -> dict:
    report = {}
    for path in sorted(Path(folder).glob("*.keras")):
        name = path.stem
        try:
            ref = np.load(path.with_suffix(".npz"))
            xs = [ref[f"x{i}"] for i in range(int(ref["n_inputs"]))]
            x = xs if bool(ref["list_input"]) else xs[0]
            model = keras.saving.load_model(path)
            if keras.backend.backend() == "torch":
                # a file trained on JAX carries `jit_compile=True`, which on torch means
                # torch.compile: minutes of tracing for a one-batch check
                model.jit_compile = False
            # predict() compiles the whole forward once (jit on JAX): far faster than
            # eager op-by-op calls for a batch of models in a fresh process
            outs = keras.tree.flatten(model.predict(x, batch_size=len(xs[0]), verbose=0))
            for i, o in enumerate(outs):
                np.testing.assert_allclose(keras.ops.convert_to_numpy(o), ref[f"y{i}"],
                                           rtol=1e-4, atol=1e-4)
            report[name] = "ok"
        except Exception as e:  # noqa: BLE001  (reported per model)
            report[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
