"""The prune/quantize/distill stages and their config: structure of the report, bad input."""

import json

import keras
import numpy as np
import pytest

from pipelines.config import ConfigError, load_config

FAST = ["model.preset=tiny", "train.epochs=2", "train.verbose=0", "tracking.enabled=false",
        "prune.epochs=2", "prune.frequency=5", "quantize.epochs=1",
        "quantize.representative_samples=64"]


@pytest.mark.once
@pytest.mark.parametrize("override, match", [
    ("prune.final_sparsity=1.0", r"prune.final_sparsity must be in \[0, 1\)"),
    ("prune.initial_sparsity=-0.1", r"prune.initial_sparsity must be in \[0, 1\)"),
    ("prune.end_step=-3", r"prune.end_step \(-3\) is before prune.begin_step \(0\)"),
    ("prune.block_size=[1]", "prune.block_size must be two integers"),
    ("prune.engine=keras", "prune.engine: 'keras' is not allowed"),
    ("prune.sparsity=0.5", "unknown key prune.'sparsity'"),
    ("quantize.keras_mode=int2", "quantize.keras_mode: 'int2' is not allowed"),
    ("distill.student=mpl", "distill.student: unknown model 'mpl'. Did you mean 'mlp'"),
    ("stages=[prune,train]", "prune needs the trained model: put it after train"),
])
def test_bad_compression_config_fails_at_load(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("digits_cnn", [override])


def _ctx(tmp_path, overrides):
    from pipelines.stages.common import Context
    from pipelines.tracking import Tracker

    cfg = load_config("digits_cnn", FAST + [f"output_dir={tmp_path}"] + overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return Context(cfg, run_dir, Tracker(cfg.tracking, cfg.name))


def test_no_prunable_layers_fails_before_training_and_keeps_files(tmp_path):
    from pipelines.stages import prune

    ctx = _ctx(tmp_path, [])
    inp = keras.Input((8, 8, 1))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Flatten()(inp))
    x = keras.layers.Reshape((64, 1))(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling1D(6)(x))  # 10 "logits", no kernel
    model = keras.Model(inp, keras.layers.Softmax(name="softmax")(x))
    model.save(ctx.run_dir / "model.keras")
    before = (ctx.run_dir / "model.keras").read_bytes()
    with pytest.raises(ValueError, match=r"has no prunable layers.*bn \(BatchNormalization\)"):
        prune.run(ctx)
    assert (ctx.run_dir / "model.keras").read_bytes() == before
    assert not (ctx.run_dir / "compressed" / "model_pruned.keras").exists()


def test_schedule_ending_after_training_fails_before_training(tmp_path):
    from pipelines.stages import prune

    ctx = _ctx(tmp_path, ["prune.end_step=100000"])
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(10, activation="softmax")]).save(
        ctx.run_dir / "model.keras")
    with pytest.raises(ConfigError, match=r"prune.end_step \(100000\) is beyond the"):
        prune.run(ctx)


@pytest.mark.once
def test_prune_schedule_with_fewer_steps_than_the_frequency_reaches_or_refuses():
    """Steps count from 1: with begin_step 0 the first pruning step is the frequency. 70% of
    12 steps is 8, before it: the target goes to step 10 (it was end_step 0: never pruned)."""
    from pipelines.stages.prune import make_schedule

    cfg = load_config("digits_cnn", FAST + ["prune.frequency=10", "prune.final_sparsity=0.5"])
    schedule = make_schedule(cfg, 12)
    assert schedule.end_step == 10 and schedule(10) == (True, 0.5)
    assert not any(schedule(s)[0] for s in range(1, 10))
    with pytest.raises(ConfigError, match=r"only 3 steps \(prune.epochs=2\): it needs at "
                                          r"least 10 steps; raise prune.epochs or lower"):
        make_schedule(cfg, 3)
    cfg = load_config("digits_cnn", FAST + ["prune.frequency=10", "prune.end_step=0"])
    with pytest.raises(ConfigError, match=r"prune.end_step \(0\) is before the first pruning "
                                          r"step \(10\)"):
        make_schedule(cfg, 100)


def test_prune_stage_with_one_pruning_step_reaches_the_target(tmp_path):
    """One epoch whose only pruning step is its last batch (frequency = steps per epoch): the
    stage's gate passes at the target (it failed at 0.000 sparsity)."""
    import math

    from pipelines.stages import prune

    (tmp_path / "a").mkdir()
    steps = math.ceil(len(_ctx(tmp_path / "a", []).splits().train) / 64)  # digits_cnn: 64
    ctx = _ctx(tmp_path, ["prune.epochs=1", f"prune.frequency={steps}",
                          "prune.final_sparsity=0.5"])
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(10, activation="softmax", name="dense")]).save(
        ctx.run_dir / "model.keras")
    summary = prune.run(ctx)
    assert summary["pruned_sparsity"] == pytest.approx(0.5, abs=0.01)


def _gru_run(tmp_path):
    """A stage context whose model.keras reads the 8x8 digits as 8 steps of 8 through a GRU."""
    ctx = _ctx(tmp_path, ["prune.final_sparsity=0.8"])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((8, 8)),
                              keras.layers.GRU(16, name="gru"),
                              keras.layers.Dense(10, activation="softmax")])
    model.save(ctx.run_dir / "model.keras")
    return ctx


def test_prune_stage_prunes_recurrent_kernels_to_the_target(tmp_path):
    """Both GRU kernels are pruned: 0.8 over the pruned weights, 0.74 overall (was 0.27)."""
    from pipelines.stages import prune

    ctx = _gru_run(tmp_path)
    summary = prune.run(ctx)
    report = json.loads((ctx.run_dir / "compressed" / "prune_report.json").read_text())
    assert "gru/gru_cell/recurrent_kernel" in report["layers"]
    assert report["target_check"]["met"] and report["layers_off_target"] == {}
    assert summary["pruned_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert summary["overall_sparsity"] > 0.73  # biases stay dense: 106 of 1418
    assert report["target_check"]["dense_params"] == {"bias and normalization": 106,
                                                      "excluded": 0}


@pytest.mark.once  # the gate's logic is backend-independent
def test_prune_stage_fails_loudly_when_the_target_is_missed(tmp_path, monkeypatch):
    """A pruning that did not hold (injected: the recurrent kernel comes back dense) fails the
    stage with the figures, writes the failed report and saves no pruned model."""
    from kdl.compress import pruning
    from pipelines.run import StageFailed
    from pipelines.stages import prune

    strip = pruning.MagnitudePruner.strip

    def leaky_strip(self):
        model = strip(self)
        for pw in self.weights:
            if pw.path.endswith("recurrent_kernel"):
                pw.variable.assign(np.ones(pw.variable.shape, "float32"))
        return model

    monkeypatch.setattr(pruning.MagnitudePruner, "strip", leaky_strip)
    ctx = _gru_run(tmp_path)
    with pytest.raises(StageFailed, match=r"prune missed its target: pruned weights reached "
                                          r"0\.\d+ sparsity \(target 0\.800"):
        prune.run(ctx)
    assert (ctx.run_dir / "compressed" / "prune_report.failed.json").is_file()
    assert not (ctx.run_dir / "compressed" / "model_pruned.keras").exists()


@pytest.mark.slow  # ~35-50 s: trains, prunes, runs QAT and converts five TFLite files
@pytest.mark.once
def test_train_prune_quantize_pipeline_report(tmp_path):
    """The default recipe, shrunk: a pruned, full-int8 model and the comparison table."""
    from kdl.export import LiteRTRunner
    from pipelines.run import run_pipeline

    cfg = load_config("digits_cnn", FAST + [f"output_dir={tmp_path}",
                                            "stages=[train,prune,quantize]"])
    run_dir, results, _ = run_pipeline(cfg, log=lambda *_: None)
    comp = run_dir / "compressed"
    prune_report = json.loads((comp / "prune_report.json").read_text())
    model = keras.saving.load_model(comp / "model_pruned.keras")
    for path, s in prune_report["layers"].items():  # 0.5 pt, or half a weight in tiny layers
        size = int(np.prod(model.get_layer(path.split("/")[0]).kernel.shape))
        assert abs(s - 0.8) <= max(0.005, 0.5 / size), (path, s)
    report = json.loads((comp / "report.json").read_text())
    variants = [r["variant"] for r in report["rows"]]
    assert variants == ["dense keras (baseline)", "dense fp32", "dense int8 (PTQ)",
                        "pruned fp32", "pruned int8 (PTQ)", "pruned int8 (QAT)"]
    rows = {r["variant"]: r for r in report["rows"]}
    final = rows["pruned int8 (QAT)"]
    assert final["nonzero_params"] < 0.35 * final["params"]
    assert final["tflite_bytes"] < rows["dense fp32"]["tflite_bytes"]
    assert final["tflite_gzip_bytes"] < rows["dense int8 (PTQ)"]["tflite_gzip_bytes"]
    assert report["representative"]["samples"] == 64
    assert len(report["representative"]["fingerprint"]) == 16
    assert {t["name"] for t in report["targets"]} >= {"int8_size_ratio",
                                                      "pruned_int8_gzip_ratio"}
    runner = LiteRTRunner(comp / "pruned_qat_int8.tflite")
    assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8
    qat = keras.saving.load_model(comp / "model_qat.keras")
    kernel = keras.ops.convert_to_numpy(qat.get_layer("dense").kernel)
    assert abs(np.mean(kernel == 0) - 0.8) <= 0.005  # masks survived QAT
    assert results["quantize"]["final_variant"] == "pruned int8 (QAT)"
    assert "pruned int8 (QAT)" in (comp / "report.txt").read_text()
