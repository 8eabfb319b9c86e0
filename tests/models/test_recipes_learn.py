"""Each zoo recipe reaches the bar stated in its header (slow: full training runs)."""

import pytest

from pipelines.config import load_config

BARS = [
    ("lenet5_digits", "test_accuracy", 0.95),
    ("vgg_digits", "test_accuracy", 0.97),
    ("resnet_digits", "test_accuracy", 0.97),
    ("alexnet_digits", "test_accuracy", 0.97),
    ("vit_digits", "test_accuracy", 0.97),
    ("rnn_sine", "test_accuracy", 0.90),
    ("transformer_sine", "test_accuracy", 0.90),
    ("tcn_adding", "test_r2", 0.90),
    ("gcn_communities", "test_accuracy", 0.85),
    ("seq2seq_reverse", "test_greedy_sequence_accuracy", 0.90),
    ("transformer_reverse", "test_greedy_sequence_accuracy", 0.90),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,metric,bar", BARS, ids=[b[0] for b in BARS])
def test_recipe_reaches_its_bar(name, metric, bar, tmp_path):
    from pipelines.run import run_pipeline

    cfg = load_config(name, [f"output_dir={tmp_path}", "tracking.enabled=false",
                             "train.verbose=0"])
    _, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    assert results["train"][metric] >= bar, f"{name}: {metric}={results['train'][metric]:.3f}"


@pytest.mark.parametrize("name", ["vae_digits", "autoencoder_digits"])
def test_custom_model_trains_through_the_train_stage(name, tmp_path):
    """Not slow: two epochs of a custom-loss model through the stage, artifacts on disk."""
    import json

    from pipelines.run import run_pipeline

    # one batch per split (train 1257, val and test 270 examples): each step compiles once
    cfg = load_config(name, [f"output_dir={tmp_path}", "tracking.enabled=false",
                             "train.verbose=0", "train.epochs=2", "model.preset=tiny",
                             "data.batch_size=2048"])
    run_dir, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test_loss"] == results["train"]["test_loss"]
    assert (run_dir / "model.keras").exists()
    assert (run_dir / "samples.png").exists() == (name == "vae_digits")
    # a model that samples on a labelled dataset also gets the samples' quality figure
    assert ("sample_confidence" in metrics) == (name == "vae_digits")
    if name == "vae_digits":
        assert 0 < metrics["noise_confidence"] <= 1 and 0 < metrics["sample_confidence"] <= 1
