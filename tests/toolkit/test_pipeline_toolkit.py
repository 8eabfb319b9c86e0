"""The toolkit through the CLI: --sanity, plots, grad stats, checkpoints, --resume, lr-find."""

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from pipelines.cli import main
from pipelines.config import load_config, save_config

COMMON = ["--set", "tracking.enabled=false", "--set", "train.verbose=0", "--stages", "train"]


def _run_dir(root: Path) -> Path:
    (run,) = [p for p in (root / "iris_mlp").iterdir() if not p.name.startswith("lr_find")]
    return run


def _killed_copy(run: Path, tmp_path: Path) -> Path:
    """A copy of `run` as if killed during its last epoch: the newest checkpoint and the
    final model.keras are gone, `latest` names the checkpoint before."""
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    copy = tmp_path / "killed"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / ckpts[-1])
    (copy / "checkpoints" / "latest").write_text(ckpts[-2] + "\n")
    (copy / "model.keras").unlink()
    return copy


def _weights(path):
    return [keras.ops.convert_to_numpy(w) for w in keras.saving.load_model(path).weights]


@pytest.mark.slow
def test_run_with_toolkit_then_resume_gives_the_same_model(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "iris_mlp", "--sanity", *COMMON, "--set", f"output_dir={out}",
            "--set", "train.epochs=4", "--set", "train.checkpoint=true",
            "--set", "train.schedule=one_cycle", "--set", "train.grad_stats_every=5",
            "--set", "train.ema_momentum=0.9"]
    assert main(args) == 0
    assert "sanity: overfit one batch" in capsys.readouterr().out
    run = _run_dir(out)
    assert (run / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 2  # epochs 3 and 4 kept

    copy = _killed_copy(run, tmp_path)  # as if killed during epoch 4: latest is epoch 3
    assert main(["run", "--resume", str(copy), "--stages", "train"]) == 0
    for a, b in zip(_weights(copy / "model.keras"), _weights(run / "model.keras"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_resume_refuses_a_run_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    save_config(load_config("iris_mlp", ["tracking.enabled=false"]), run / "config.yaml")
    assert main(["run", "--resume", str(run), "--stages", "train"]) == 2
    assert "without checkpoints" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a kdl run directory" in capsys.readouterr().err


@pytest.mark.once
def test_lr_find_cli_writes_plot_and_suggestion(tmp_path, capsys):
    assert main(["lr-find", "iris_mlp", "--steps", "20", "--set", "tracking.enabled=false",
                 "--set", f"output_dir={tmp_path}"]) == 0
    text = capsys.readouterr().out
    assert "suggested learning rate" in text and "--set train.learning_rate=" in text
    (found,) = (tmp_path / "iris_mlp").glob("lr_find-*/lr_find.png")
    assert found.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("override, message", [
    ("train.callbacks={reduce_lr_on_plateau: {patience: 2}}", "schedule=constant"),
    ("train.callbacks={no_such_callback: {}}", "unknown callback"),
    ("train.checkpoint_every_steps=5", "needs train.checkpoint=true"),
])
def test_bad_toolkit_config_is_named(override, message, capsys):
    assert main(["run", "iris_mlp", "--set", override]) == 2
    assert message in capsys.readouterr().err


def _optimizer_state(path):
    optimizer = keras.saving.load_model(path).optimizer
    return optimizer, [keras.ops.convert_to_numpy(v) for v in optimizer.variables]


@pytest.mark.slow  # 15-75 s: a CLI run and a resume (the fast in-process variant
# is tests/toolkit/test_resume.py::test_grouped_optimizer_interrupted_...)
def test_param_groups_under_mixed_precision_checkpoint_and_resume(tmp_path):
    """`train.param_groups` + `train.precision` (mixed) + `train.checkpoint` from the CLI:
    it trains with the groups (the frozen bias stays at its zero init), and a run
    rolled back to its first checkpoint and resumed with `--resume` ends with the
    same weights and optimizer variables as the uninterrupted run, bit for bit."""
    from kdl.optimizers import GroupedOptimizer
    from kdl.testing import mixed_policy

    out = tmp_path / "out"
    groups = "[{match: '^dense_0/', lr_scale: 0.1}, {match: '^dense_1/bias', lr_scale: 0}]"
    assert main(["run", "iris_mlp", *COMMON, "--set", f"output_dir={out}",
                 "--set", "train.epochs=2", "--set", "train.checkpoint=true",
                 "--set", f"train.precision={mixed_policy()}",
                 "--set", f"train.param_groups={groups}"]) == 0
    run = _run_dir(out)
    model = keras.saving.load_model(run / "model.keras")
    grouped = model.optimizer
    if mixed_policy() == "mixed_float16":
        assert isinstance(grouped, keras.optimizers.LossScaleOptimizer)
        grouped = grouped.inner_optimizer
    assert isinstance(grouped, GroupedOptimizer)
    scales = grouped.group_scales()
    assert scales["dense_0/kernel"] == 0.1 and scales["dense_1/bias"] == 0.0
    assert scales["head/kernel"] == 1.0
    assert not np.any(keras.ops.convert_to_numpy(model.get_layer("dense_1").bias))
    assert model.get_layer("dense_0").dtype_policy.name == mixed_policy()

    copy = _killed_copy(run, tmp_path)  # as if killed during epoch 2: latest is epoch 1
    assert main(["run", "--resume", str(copy), "--stages", "train"]) == 0
    for a, b in zip(_weights(copy / "model.keras"), _weights(run / "model.keras"), strict=True):
        np.testing.assert_array_equal(a, b)
    (_, resumed), (_, reference) = (_optimizer_state(copy / "model.keras"),
                                    _optimizer_state(run / "model.keras"))
    assert len(resumed) == len(reference)
    for a, b in zip(resumed, reference, strict=True):
        np.testing.assert_array_equal(a, b)
