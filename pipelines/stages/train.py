"""The train stage: data -> model -> fit -> evaluate -> run directory + MLflow."""

from __future__ import annotations

import math

import keras
import numpy as np

from kdl import training
from kdl.backend.distribution import Distributed
from kdl.data import DataSplits, make_tf_dataset, model_input, take
from kdl.io import atomic_write_json
from kdl.models import build_model
from kdl.registry import MODELS
from kdl.transfer import load_backbone, with_head
from pipelines import plots, toolkit
from pipelines.stages.common import Context, StageFailed, load_data, model_params, save_model


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    policy = training.prepare(cfg.train)
    splits = ctx.state.get("splits") or load_data(cfg, run_dir / "cache")  # (preflight's)
    ctx.state["splits"] = splits
    if splits.dropped:  # data.nonfinite=drop: counted, reported
        print(f"data: dropped {sum(splits.dropped.values())} examples holding NaN or inf "
              f"({', '.join(f'{k} {v}' for k, v in splits.dropped.items())})")
        tracker.log_metrics({f"data/nonfinite_dropped_{k}": v
                             for k, v in splits.dropped.items()})
    if splits.files_report is not None:  # image files: what was read, what was skipped
        report = splits.files_report
        atomic_write_json(run_dir / "data_report.json", report)
        tracker.log_artifact(run_dir / "data_report.json")
        tracker.log_metrics({"data/images": report["images"],
                             "data/skipped_files": report["skipped"]})
        if report["skipped"]:
            print(f"data: skipped {report['skipped']} unusable file(s) of {report['root']} "
                  f"(listed in {run_dir / 'data_report.json'})")
    text_report = splits.info.get("data_report")
    if text_report:  # texts: rows dropped (empty, no label) or repaired (non-UTF-8 bytes)
        atomic_write_json(run_dir / "data_report.json", text_report)
        tracker.log_artifact(run_dir / "data_report.json")
        tracker.log_metrics({f"data/{k}": float(v) for k, v in text_report.items()})
        fixed = {k: v for k, v in text_report.items() if k not in ("rows", "examples") and v}
        if fixed:
            print(f"data: {text_report['examples']} of {text_report['rows']} rows used; "
                  + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in fixed.items()))
    if splits.augment is not None:  # one augmented training batch, to look at
        plots.image_batch(make_tf_dataset(splits.train, 32, shuffle=True, seed=cfg.data.seed,
                                          augment=splits.augment),
                          run_dir / "augmented_batch.png", "one augmented training batch")
        tracker.log_artifact(run_dir / "augmented_batch.png")
    atomic_write_json(run_dir / "preprocessing.json", {
        "normalization": splits.normalizer.to_dict(), "input_shape": splits.input_shape,
        "task": splits.task, "label_names": splits.label_names,
        "data_fingerprint": splits.fingerprint, "data_info": splits.info,
        "nonfinite_dropped": splits.dropped})
    tracker.set_tags({"data_fingerprint": splits.fingerprint}, run_id=tracker.parent_id)
    log_dataset(ctx, splits)

    dist = ctx.state.get("distribution") or Distributed()
    if MODELS.get(cfg.model.name).spec.custom_training:  # trained by its own losses (zoo)
        return run_custom(ctx, splits)
    transfer = cfg.train.transfer
    with dist.scope():  # variables made, and fit run, on the configured devices
        if transfer.backbone:  # a trained backbone and a new head (docs/training.md)
            backbone = load_backbone(transfer.backbone, cut_at=transfer.cut_at)
            model = with_head(backbone, splits.num_outputs, splits.task, transfer.dropout)
        else:
            model = build_model(cfg.model.name, splits.input_shape, splits.num_outputs,
                                task=splits.task, preset=cfg.model.preset,
                                **model_params(cfg, splits))
        steps = math.ceil(len(splits.train) / cfg.data.batch_size)
        training.compile_for(model, splits.task, cfg.train, steps, training.soft_labels(splits))
        dist.check_layout(model)
        tracker.log_params({"precision_policy": policy, "params": model.count_params(),
                            "train_examples": len(splits.train)})

        callbacks = [tracker.keras_callback("train/"), *ctx.state.get("callbacks", []),
                     *toolkit.train_callbacks(ctx, splits)]
        toolkit.log_schedule_plot(ctx, model, cfg.train.epochs * steps)
        if transfer.backbone and transfer.phases:
            result = training.fit_phases(model, backbone, splits, cfg.train,
                                         cfg.data.batch_size, callbacks=callbacks)
            atomic_write_json(run_dir / "transfer_phases.json", result.extra["phases"])
        else:
            result = training.fit(model, splits, cfg.train, cfg.data.batch_size,
                                  callbacks=callbacks,
                                  checkpoint_dir=toolkit.checkpoint_dir(ctx))
    model = result.extra.get("model", model)  # a resumed run continues a restored model
    if not dist.is_chief:  # process k > 0: its part of training is done
        return {"process_id": dist.process_id, "epochs": result.epochs_run}
    if dist.kind != "none":
        atomic_write_json(run_dir / "distribution.json", {
            **dist.params(), "devices": dist.devices, "mesh": dist.mesh,
            "variables": dist.variable_layouts(model)})
        tracker.log_artifact(run_dir / "distribution.json")
    model = dist.local_model(model, run_dir)
    atomic_write_json(run_dir / "history.json", result.history)
    if result.history.get("loss"):
        plots.training_curves(result.history, run_dir / "training_curves.png")
    if result.diagnosis is not None:
        atomic_write_json(run_dir / "diagnosis.json", result.diagnosis)
        tracker.log_artifact(run_dir)
        raise StageFailed(f"training diverged: {result.diagnosis['message']}")

    test = training.evaluate(model, splits.test, splits.task)
    decode = MODELS.get(cfg.model.name).spec.decode
    if decode is not None and "start_id" in splits.info:  # autoregressive, no teacher forcing
        test.update(training.evaluate_decoding(model, splits.test, decode,
                                               splits.info["start_id"]))
    save_model(model, run_dir / "model.keras")
    ctx.state["model_path"] = run_dir / "model.keras"
    metrics = {f"test_{k}": v for k, v in test.items()}
    metrics.update(epochs=result.epochs_run, best_epoch=result.best_epoch or result.epochs_run,
                   stopped_early=result.stopped_early, params=model.count_params())
    if splits.task == "classification":
        y_pred = training.predict(model, splits.test.x).argmax(-1)
        counts = plots.confusion_matrix(splits.test.y.reshape(-1), y_pred.reshape(-1),
                                        splits.label_names,
                                        run_dir / "confusion_matrix.png")
        metrics_file = {**metrics, "confusion_matrix": counts.tolist()}
    else:
        metrics_file = metrics
    atomic_write_json(run_dir / "metrics.json", metrics_file)

    numeric = {f"train/{k}": float(v) for k, v in metrics.items() if v is not None}
    tracker.log_metrics(numeric)
    tracker.log_metrics(numeric, run_id=tracker.parent_id)
    for name in ("config.yaml", "preprocessing.json", "history.json", "metrics.json",
                 "training_curves.png", "confusion_matrix.png"):
        tracker.log_artifact(run_dir / name)
    registered = cfg.tracking.model_name or f"kdl-{tracker.experiment}"
    version = tracker.log_keras_model(model, model_input(take(splits.test.x, slice(0, 4))),
                                      registered if cfg.tracking.register_model else None)
    if version is not None:
        metrics["registered_version"] = f"{registered} v{version}"
        tracker.set_tags({"registered_model": metrics["registered_version"]},
                         run_id=tracker.parent_id)
    return metrics


def run_custom(ctx: Context, splits: DataSplits) -> dict:
    """Train a `CustomTrainModel` (VAE, GAN, DDPM, SimCLR, ...) on the inputs alone.

    Its registry entry names the argument that takes the data's shape
    (`data_arg`); it is compiled with the configured optimizer (cloned per
    group for several optimizers) and fitted with the usual callbacks. Metrics
    are its own losses on the test split; models with `sample` also leave a
    `samples.png` grid and, on a labelled dataset, `sample_confidence`: the
    mean top-class probability a classifier of the real training data gives
    the samples (`noise_confidence`: the same on noise); models with
    `probe_features` (CLIP) on labelled data report a linear probe's test
    accuracy, trained and untrained.
    """
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    entry = MODELS.get(cfg.model.name)
    dist = ctx.state.get("distribution") or Distributed()
    with dist.scope():
        model = MODELS.build(cfg.model.name, preset=cfg.model.preset,
                             **{entry.spec.data_arg: splits.input_shape, **cfg.model.params})
        probing = hasattr(model, "probe_features") and splits.task == "classification"
        if probing:  # the same encoder before training: the random-encoder baseline
            untrained = probe_accuracy(model, splits)
        steps = math.ceil(len(splits.train) / cfg.data.batch_size)
        model.compile(training.make_optimizer(cfg.train, steps))
        result = training.fit(model, splits, cfg.train, cfg.data.batch_size,
                              callbacks=[tracker.keras_callback("train/"),
                                         *ctx.state.get("callbacks", [])])
    if not dist.is_chief:
        return {"process_id": dist.process_id}
    if dist.num_processes > 1:  # a copy of this process's own, compiled for evaluate
        model = dist.local_model(model, run_dir)
        model.compile(training.make_optimizer(cfg.train, steps))
    atomic_write_json(run_dir / "history.json", result.history)
    if result.diagnosis is not None:
        atomic_write_json(run_dir / "diagnosis.json", result.diagnosis)
        raise StageFailed(f"training diverged: {result.diagnosis['message']}")
    test = model.evaluate(model_input(splits.test.x), batch_size=cfg.data.batch_size, verbose=0,
                          return_dict=True)
    save_model(model, run_dir / "model.keras")
    ctx.state["model_path"] = run_dir / "model.keras"
    metrics = {f"test_{k}": float(v) for k, v in test.items()}
    first = next(iter(result.history.values()), [])
    metrics.update(epochs=len(first), params=model.count_params())
    if probing:
        metrics.update(test_probe_accuracy=probe_accuracy(model, splits),
                       test_probe_accuracy_untrained=untrained)
    artifacts = ["config.yaml", "preprocessing.json", "history.json", "metrics.json"]
    if hasattr(model, "sample"):
        from kdl.models.generative import classifier_confidence, save_image_grid

        samples = model.sample(64)
        save_image_grid(samples, run_dir / "samples.png")
        artifacts.append("samples.png")
        if splits.task == "classification":  # the quality figure of the samples
            metrics.update(classifier_confidence(samples, splits.train.x, splits.train.y))
    atomic_write_json(run_dir / "metrics.json", metrics)
    tracker.log_metrics({f"train/{k}": float(v) for k, v in metrics.items()})
    for name in artifacts:
        tracker.log_artifact(run_dir / name)
    return metrics


def probe_accuracy(model, splits: DataSplits) -> float:
    """Test accuracy of a logistic regression on `model.probe_features` of the first input,
    fitted on the training split's labels (a linear probe of the representation)."""
    from sklearn.linear_model import LogisticRegression

    def features(x):
        x = x[0] if isinstance(x, tuple) else x
        return keras.ops.convert_to_numpy(model.probe_features(x))

    clf = LogisticRegression(max_iter=2000).fit(features(splits.train.x), splits.train.y)
    return float(clf.score(features(splits.test.x), splits.test.y))


def dataset_features(split):
    """What MLflow's dataset input describes of a split: the arrays (named ones for several
    inputs), or the file paths of an image split (not decoded for this)."""
    if hasattr(split, "paths"):
        return np.asarray(split.paths)
    if isinstance(split.x, tuple):
        return {f"input_{i}": a for i, a in enumerate(split.x)}
    return split.x


def log_dataset(ctx: Context, splits: DataSplits) -> None:
    """The training split as the parent run's MLflow dataset input, digest = fingerprint."""
    d = ctx.cfg.data
    ctx.tracker.log_dataset(dataset_features(splits.train), splits.train.y, name=d.name,
                            digest=splits.fingerprint, source=d.path,
                            run_id=ctx.tracker.parent_id)
