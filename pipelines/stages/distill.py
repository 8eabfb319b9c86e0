"""The distill stage: a small student learns from the trained teacher (`model.keras`).

Trains the student twice from the same seed on the same data: alone (labels
only) and distilled (`Distiller`: KL on temperature-softened outputs plus the
hard-label loss). Reports teacher, student-from-scratch and distilled student
side by side (test metric, top-1 agreement with the teacher, parameters) and
writes `<run_dir>/compressed/student_distilled.keras`.
"""

from __future__ import annotations

import keras
import numpy as np

from kdl import training
from kdl.compress.distill import Distiller
from kdl.compress.report import count_params
from kdl.config import ConfigError
from kdl.io import atomic_write_json, file_sizes
from kdl.models import build_model
from pipelines.stages.common import Context, compile_model, load_trained, save_model


def run(ctx: Context) -> dict:
    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    d = cfg.distill
    splits = ctx.splits()
    if splits.task != "classification":
        raise ConfigError("the distill stage needs a classification task (KL on class "
                          "probabilities); remove it from stages")
    teacher = load_trained(ctx)

    def student():
        keras.utils.set_random_seed(cfg.train.seed)
        return build_model(d.student, splits.input_shape, splits.num_outputs,
                           task=splits.task, preset=d.student_preset, **d.student_params)

    fit_args = dict(batch_size=cfg.data.batch_size, epochs=d.epochs, verbose=0,
                    validation_data=(splits.val.x, splits.val.y))
    alone = student()
    compile_model(alone, splits.task, d.learning_rate)
    alone.fit(splits.train.x, splits.train.y, **fit_args)
    distilled = student()
    distiller = Distiller(distilled, teacher, temperature=d.temperature, alpha=d.alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(d.learning_rate), metrics=["accuracy"])
    distiller.fit(splits.train.x, splits.train.y, **fit_args,
                  callbacks=[tracker.keras_callback("distill/")])

    out = run_dir / "compressed" / "student_distilled.keras"
    out.parent.mkdir(exist_ok=True)
    save_model(distilled, out)
    teacher_top1 = training.predict(teacher, splits.test.x).argmax(-1)
    rows = {}
    for name, model in (("teacher", teacher), ("student_alone", alone),
                        ("student_distilled", distilled)):
        pred = training.predict(model, splits.test.x)
        rows[name] = {"accuracy": training.score(splits.task, splits.test.y, pred)["accuracy"],
                      "teacher_agreement": float(np.mean(pred.argmax(-1) == teacher_top1)),
                      "params": count_params(model)["params"]}
    rows["student_distilled"]["keras_bytes"] = file_sizes(out).size_bytes
    lines = [f"{'model':<18} {'params':>9} {'accuracy':>9} {'agrees w/ teacher':>18}"]
    lines += [f"{k:<18} {r['params']:>9,} {r['accuracy']:>9.4f} {r['teacher_agreement']:>18.4f}"
              for k, r in rows.items()]
    print("\n[distill] teacher vs students (test split)\n" + "\n".join(lines))
    atomic_write_json(run_dir / "compressed" / "distill_report.json", rows)
    metrics = {f"distill/{m}/{k}": float(v) for m, r in rows.items() for k, v in r.items()}
    tracker.log_metrics(metrics)
    tracker.log_metrics(metrics, run_id=tracker.parent_id)
    tracker.log_artifact(run_dir / "compressed" / "distill_report.json", "compressed")
    return {f"{m}_{k}": v for m, r in rows.items() for k, v in r.items()
            if k in ("accuracy", "teacher_agreement")}
