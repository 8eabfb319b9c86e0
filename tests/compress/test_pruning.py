"""Native magnitude pruning: masks through fit, exact sparsity, strip/reload, structure, errors."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kdl.compress import (
    ConstantSparsity,
    MagnitudePruner,
    PolynomialDecay,
    make_schedule,
    sparsity_report,
)


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(40, activation="relu", name="dense")(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(160, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 160)


def zero_fraction(v):
    return float(np.mean(keras.ops.convert_to_numpy(v) == 0))


@pytest.fixture(scope="module")
def pruned(data, tmp_path_factory):
    """Prune 80% over steps 1..10 (5 steps/epoch), then train 2 more epochs."""
    x, y = data
    model = small_model()
    pruner = MagnitudePruner(model, PolynomialDecay(0.0, 0.8, 0, 10, frequency=2),
                             exclude=["head"])
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[pruner.callback()])
    after_schedule = pruner.report()
    masks = {pw.path: pw.mask.copy() for pw in pruner.weights}
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[pruner.callback()])
    stripped = pruner.strip()
    path = tmp_path_factory.mktemp("pruned") / "pruned.keras"
    stripped.save(path)
    return pruner, stripped, after_schedule, masks, path


def test_exact_sparsity_per_layer(pruned):
    pruner, model, after_schedule, _, _ = pruned
    assert pruner.step == 20
    assert set(after_schedule) == {"conv/kernel", "dense/kernel"}  # head excluded
    for path, s in pruner.report().items():
        assert abs(s - 0.8) <= 0.005, (path, s)
    assert zero_fraction(model.get_layer("head").kernel) == 0.0


def test_masks_hold_through_fit(pruned):
    """Adam's momentum moves pruned weights unless the mask is re-applied after each step."""
    pruner, model, _, masks, _ = pruned
    for pw in pruner.weights:
        w = keras.ops.convert_to_numpy(pw.variable)
        np.testing.assert_array_equal(pw.mask, masks[pw.path])  # no mask update after end_step
        assert np.all(w[masks[pw.path] == 0] == 0)
        assert np.count_nonzero(w[masks[pw.path] == 1]) == int(masks[pw.path].sum())


def test_stripped_model_reloads(pruned, data):
    _, model, _, _, path = pruned
    loaded = keras.saving.load_model(path)
    assert all(type(la).__module__.startswith("keras.") for la in loaded.layers)
    np.testing.assert_allclose(loaded.predict(data[0][:16], verbose=0),
                               model.predict(data[0][:16], verbose=0), atol=1e-6)
    report = sparsity_report(loaded, exclude=["head"])
    assert all(abs(s - 0.8) <= 0.005 for s in report["layers"].values())
    assert report["nonzero_params"] < report["params"]


def test_schedule_only_prunes_on_its_steps():
    s = PolynomialDecay(0.2, 0.8, begin_step=10, end_step=30, frequency=5)
    assert [t for t in range(0, 40) if s.should_prune(t)] == [10, 15, 20, 25, 30]
    assert s.sparsity(10) == pytest.approx(0.2) and s.sparsity(30) == pytest.approx(0.8)
    assert s.sparsity(20) == pytest.approx(0.8 - 0.6 * 0.5**3)
    c = ConstantSparsity(0.5, begin_step=3, frequency=4)
    assert [t for t in range(0, 20) if c.should_prune(t)] == [3, 7, 11, 15, 19]


def test_global_scope_hits_overall_target(data):
    model = small_model()
    pruner = MagnitudePruner(model, ConstantSparsity(0.7, 0, frequency=1), scope="global")
    model.fit(data[0], data[1], batch_size=32, epochs=1, verbose=0,
              callbacks=[pruner.callback()])
    sizes = [pw.mask.size for pw in pruner.weights]
    zeros = sum(zero_fraction(pw.variable) * pw.mask.size for pw in pruner.weights)
    assert abs(zeros / sum(sizes) - 0.7) <= 0.005
    per_layer = list(pruner.report().values())
    assert max(per_layer) - min(per_layer) > 0.01  # one threshold, unequal layers


def test_block_sparsity_1x4(data):
    model = small_model()
    pruner = MagnitudePruner(model, ConstantSparsity(0.5, 0, frequency=1), block_size=(1, 4),
                             exclude=["head"])  # 10 outputs: not whole 1x4 blocks
    model.fit(data[0], data[1], batch_size=32, epochs=1, verbose=0,
              callbacks=[pruner.callback()])
    for pw in pruner.weights:
        w = keras.ops.convert_to_numpy(pw.variable)
        blocks = (w.reshape(-1, w.shape[-1]) != 0).reshape(-1, w.shape[-1] // 4, 4)
        nz = blocks.sum(-1)
        assert np.all((nz == 0) | (nz == 4)), pw.path  # whole blocks pruned
        assert abs(zero_fraction(pw.variable) - 0.5) <= 0.005, pw.path


def test_two_four_structure(data):
    model = small_model()
    pruner = MagnitudePruner(model, ConstantSparsity(0.5, 0, frequency=1), m_by_n=(2, 4),
                             exclude=["conv"])  # conv's input axis has 1 channel
    model.fit(data[0], data[1], batch_size=32, epochs=1, verbose=0,
              callbacks=[pruner.callback()])
    for pw in pruner.weights:
        w = keras.ops.convert_to_numpy(pw.variable)  # (in, out)
        groups = (w != 0).T.reshape(w.shape[1], -1, 4)
        assert np.all(groups.sum(-1) <= 2), pw.path
        assert abs(zero_fraction(pw.variable) - 0.5) <= 0.01


@pytest.mark.parametrize("kwargs, match", [
    ({"target_sparsity": 1.0}, r"target_sparsity must be a number in \[0, 1\)"),
    ({"target_sparsity": -0.1}, r"target_sparsity must be a number in \[0, 1\)"),
    ({"target_sparsity": 0.5, "begin_step": 10, "end_step": 5}, "end_step .5. is before"),
    ({"target_sparsity": 0.5, "frequency": 0}, "frequency must be"),
])
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_schedule("constant", **kwargs)


def test_bad_pruner_inputs():
    with pytest.raises(ValueError, match="end_step cannot be -1"):
        PolynomialDecay(0.0, 0.5, 0, -1)
    with pytest.raises(ValueError, match="unknown pruning schedule 'cosine'"):
        make_schedule("cosine")
    inp = keras.Input((4,))
    plain = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(inp))
    with pytest.raises(ValueError, match=r"no prunable layers.*bn \(BatchNormalization\)"):
        MagnitudePruner(plain, ConstantSparsity(0.5))
    with pytest.raises(ValueError, match=r"not matched by exclude=\['.\*'\]"):
        MagnitudePruner(small_model(), ConstantSparsity(0.5), exclude=[".*"])
    with pytest.raises(ValueError, match="layer 'conv': 2:4 sparsity needs"):
        MagnitudePruner(small_model(), ConstantSparsity(0.5), m_by_n=(2, 4))
    with pytest.raises(ValueError, match="scope must be"):
        MagnitudePruner(small_model(), ConstantSparsity(0.5), scope="model")


ORACLE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    S = tfmot.sparsity.keras
    cases, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = []
    for name, kw in cases:
        s = S.ConstantSparsity(**kw) if name == "constant" else S.PolynomialDecay(**kw)
        # The schedules are elementwise in `step`: one call on every step at once
        # (6,000 eager scalar calls took most of this test's time).
        prune, sparsity = (np.asarray(v) for v in s(tf.constant(steps, tf.int64)))
        sparsity = np.broadcast_to(sparsity, prune.shape)  # ConstantSparsity: a scalar
        assert prune.shape == (len(steps),), prune.shape
        out.append([[bool(p), float(v)] for p, v in zip(prune, sparsity)])
    print("ORACLE" + json.dumps(out))
""")


@pytest.mark.once
def test_schedules_match_tfmot_at_every_step():
    """tfmot computes the schedules in its own TF_USE_LEGACY_KERAS=1 process (the oracle).

    Pruning steps agree exactly; sparsities within 1e-6 (TF's and NumPy's float32
    `pow` may differ in the last bit, amplified by `final - ...` cancellation).
    """
    cases = [
        ("constant", {"target_sparsity": 0.8, "begin_step": 0, "frequency": 100}),
        ("constant", {"target_sparsity": 0.5, "begin_step": 7, "end_step": 300,
                      "frequency": 13}),
        ("polynomial_decay", {"initial_sparsity": 0.0, "final_sparsity": 0.8,
                              "begin_step": 0, "end_step": 1000, "frequency": 100}),
        ("polynomial_decay", {"initial_sparsity": 0.3, "final_sparsity": 0.9, "power": 3,
                              "begin_step": 17, "end_step": 411, "frequency": 7}),
        ("polynomial_decay", {"initial_sparsity": 0.1, "final_sparsity": 0.6, "power": 2,
                              "begin_step": 5, "end_step": 6, "frequency": 1}),
    ]
    steps = list(range(0, 1201))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", ORACLE, json.dumps(cases), json.dumps(steps)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ORACLE"))
    expected = json.loads(line[len("ORACLE"):])
    for (name, kw), want in zip(cases, expected, strict=True):
        sched = make_schedule(name, **kw)
        got = [[sched.should_prune(t), sched.sparsity(t)] for t in steps]
        for t, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g[0] == w[0] and abs(g[1] - w[1]) <= 1e-6, (name, kw, t, g, w)
