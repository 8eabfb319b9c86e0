"""The prune stage: fine-tune the trained model under magnitude pruning, strip, save.

Reads `<run_dir>/model.keras` (the train stage's), writes
`<run_dir>/compressed/model_pruned.keras` (a plain Keras model) and leaves
`model.keras` untouched as the dense baseline. Bad settings (no prunable
layer, a schedule that ends after training, tfmot on a custom layer) fail
before any training.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from kdl import training
from kdl.compress import ConstantSparsity, MagnitudePruner, PolynomialDecay
from kdl.compress.pruning import recalibrate_batch_norm, sparsity_check
from kdl.compress.report import count_params
from kdl.config import ConfigError
from kdl.gates import at_most
from kdl.io import atomic_write_json
from pipelines.stages.common import (
    Context,
    StageFailed,
    calibration_batches,
    compile_model,
    fit_data,
    load_trained,
    save_model,
)


def make_schedule(cfg, total_steps: int):
    """The configured schedule over `total_steps` fine-tuning steps (numbered from 1).

    A schedule prunes at `begin_step + k * frequency`; step 0 never runs, so with
    `begin_step: 0` the first pruning step is `frequency`. Refuses (ConfigError) a
    schedule whose final sparsity would not be applied within the steps.
    """
    p = cfg.prune
    first = p.begin_step if p.begin_step >= 1 else p.frequency  # first step that prunes
    if first > total_steps:
        raise ConfigError(f"prune: the first pruning step is {first} (prune.begin_step="
                          f"{p.begin_step}, prune.frequency={p.frequency}) but the fine-tuning "
                          f"has only {total_steps} steps (prune.epochs={p.epochs}): it needs at "
                          f"least {first} steps; raise prune.epochs or lower prune.frequency")
    if p.end_step is None:  # 70% of the steps, on a pruning step so the target is applied
        end = p.begin_step + (max(0, int(0.7 * total_steps) - p.begin_step)
                              // p.frequency) * p.frequency
        end = max(end, first)  # few steps: the target at the first pruning step
    else:
        end = p.end_step
        if end < first:
            raise ConfigError(f"prune.end_step ({end}) is before the first pruning step "
                              f"({first}): the final sparsity would never be applied. Set "
                              f"prune.end_step >= {first}")
    if p.schedule == "polynomial_decay" and (end - p.begin_step) % p.frequency:
        raise ConfigError(f"prune.end_step - prune.begin_step ({end - p.begin_step}) is not a "
                          f"multiple of prune.frequency ({p.frequency}): the last pruning step "
                          "would fall before end_step and miss final_sparsity")
    if end > total_steps:
        raise ConfigError(f"prune.end_step ({end}) is beyond the {total_steps} fine-tuning "
                          f"steps (prune.epochs={p.epochs}): the final sparsity would never be "
                          "reached. Lower prune.end_step or raise prune.epochs.")
    if p.schedule == "constant":
        return ConstantSparsity(p.final_sparsity, p.begin_step, end, p.frequency)
    return PolynomialDecay(p.initial_sparsity, p.final_sparsity, p.begin_step, end, p.power,
                           p.frequency)


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    p = cfg.prune
    splits = ctx.splits()
    model = load_trained(ctx)
    baseline = training.evaluate(model, splits.test, splits.task)
    steps = math.ceil(len(splits.train) / cfg.data.batch_size) * p.epochs
    schedule = make_schedule(cfg, steps)
    keras.utils.set_random_seed(cfg.train.seed)
    if p.engine == "native":
        pruner = MagnitudePruner(model, schedule, scope=p.scope, block_size=p.block_size,
                                 m_by_n=p.m_by_n, exclude=p.exclude)  # raises before fitting
        compile_model(model, splits.task, p.learning_rate)
        model.fit(**fit_data(cfg, splits), epochs=p.epochs, verbose=0,
                  callbacks=[pruner.callback(), tracker.keras_callback("prune/")])
        model = pruner.strip()
        recalibrate_batch_norm(model, calibration_batches(splits))
        layers = pruner.report()
    else:
        from kdl.compress.pruning import prunable_weights
        from kdl.compress.tfmot_engine import model_spec, tfmot_prune

        if p.exclude or p.scope != "layer" or p.block_size != [1, 1]:
            raise ConfigError("prune.engine=tfmot takes no exclude/scope/block_size here; "
                              "use prune.engine=native for those")
        model_spec(model)  # names a custom layer before any work
        loss = "sparse_categorical_crossentropy" if splits.task == "classification" else "mse"
        model = tfmot_prune(model, schedule, splits.train.x, splits.train.y, epochs=p.epochs,
                            batch_size=cfg.data.batch_size, learning_rate=p.learning_rate,
                            loss=loss, seed=cfg.train.seed)
        compile_model(model, splits.task, p.learning_rate)
        recalibrate_batch_norm(model, calibration_batches(splits))
        layers = {v.path: float(np.mean(keras.ops.convert_to_numpy(v) == 0))
                  for _, v in prunable_weights(model)}
    target = 1 - p.m_by_n[0] / p.m_by_n[1] if p.m_by_n else schedule.final_sparsity
    off = {k: s for k, s in layers.items() if not at_most(abs(s - target), 0.005)}
    check = sparsity_check(model, target, p.exclude if p.engine == "native" else ())
    test = training.evaluate(model, splits.test, splits.task)
    out = run_dir / "compressed" / "model_pruned.keras"
    out.parent.mkdir(exist_ok=True)
    name, _ = training.primary_metric(splits.task)
    counts = count_params(model)
    summary = {**counts, "target_sparsity": target,
               "min_layer_sparsity": min(layers.values()),
               "max_layer_sparsity": max(layers.values()),
               f"test_{name}": test[name], f"baseline_test_{name}": baseline[name],
               f"delta_{name}_pt": 100 * (test[name] - baseline[name])}
    summary.update(pruned_sparsity=check["pruned_sparsity"],
                   overall_sparsity=check["overall_sparsity"])
    report = {**summary, "layers": layers, "schedule": schedule.get_config(),
              "engine": p.engine, "layers_off_target": off, "target_check": check}
    if not check["met"]:
        failed = run_dir / "compressed" / "prune_report.failed.json"
        atomic_write_json(failed, report)
        raise StageFailed(f"prune missed its target: {check['message']}; no pruned model "
                          f"is saved (report: {failed})")
    save_model(model, out)
    ctx.state["pruned_model_path"] = out
    atomic_write_json(run_dir / "compressed" / "prune_report.json", report)
    tracker.log_metrics({f"prune/{k}": float(v) for k, v in summary.items()})
    tracker.log_artifact(run_dir / "compressed" / "prune_report.json", "compressed")
    if off:
        print(f"[prune] warning: layers off the {target:.0%} target by > 0.5 pt: {off} "
              "(a layer too small for that sparsity, or global scope)")
    return summary
