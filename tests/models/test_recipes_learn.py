"""Each zoo recipe reaches the bar stated in its header (slow: full training runs)."""

import pytest

from kdl.config import load_config

BARS = [
    ("lenet5_digits", "test_accuracy", 0.95),
    ("vgg_digits", "test_accuracy", 0.97),
    ("resnet_digits", "test_accuracy", 0.97),
    ("alexnet_digits", "test_accuracy", 0.95),
    ("vit_digits", "test_accuracy", 0.95),
    ("rnn_sine", "test_accuracy", 0.90),
    ("transformer_sine", "test_accuracy", 0.90),
    ("tcn_adding", "test_r2", 0.90),
    ("gcn_communities", "test_accuracy", 0.85),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,metric,bar", BARS, ids=[b[0] for b in BARS])
def test_recipe_reaches_its_bar(name, metric, bar, tmp_path):
    from pipelines.run import run_pipeline

    cfg = load_config(name, [f"output_dir={tmp_path}", "tracking.enabled=false",
                             "train.verbose=0"])
    _, results, _ = run_pipeline(cfg, stages=["train"], log=lambda *_: None)
    assert results["train"][metric] >= bar, f"{name}: {metric}={results['train'][metric]:.3f}"
