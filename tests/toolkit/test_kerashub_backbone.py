"""A KerasHub backbone from a local preset directory (no network): keras-hub, the
maintained successor of keras-nlp, is what kdl.transfer loads for `kerashub:<preset>`."""

import numpy as np
import pytest

from kdl.transfer import load_backbone

pytestmark = pytest.mark.once  # KerasHub's loader is backend-independent; its import is slow


def test_local_kerashub_preset_loads_with_identical_weights(tmp_path):
    import keras_hub

    original = keras_hub.models.BertBackbone(
        vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=8)
    original.save_to_preset(str(tmp_path / "tiny_bert"))
    loaded = load_backbone(f"kerashub:{tmp_path / 'tiny_bert'}")
    assert isinstance(loaded, keras_hub.models.BertBackbone)
    assert loaded.count_params() == original.count_params()
    for a, b in zip(original.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
