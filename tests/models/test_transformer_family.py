"""Transformer models: reference parameter counts, masks, token input."""

import keras
import numpy as np
import pytest

from kdl.models import build_model


def test_vit_tiny_on_digits_shape():
    model = build_model("vit", (8, 8, 1), 10, preset="default")
    assert model.get_layer("positions").positions.shape == (1, 17, 64)  # 16 patches + class


@pytest.mark.slow
def test_vit_b16_has_86567656_params():
    model = build_model("vit", (224, 224, 3), 1000, preset="b16")
    assert model.count_params() == 86_567_656


def encoder_decoder_params(d=512, ff=2048, layers=6, src_vocab=10_000, tgt_vocab=10_000):
    mha = 4 * (d * d + d)
    ffn = d * ff + ff + ff * d + d
    ln = 2 * d
    encoder = layers * (mha + ffn + 2 * ln)
    decoder = layers * (2 * mha + ffn + 3 * ln)
    embeddings = src_vocab * d + tgt_vocab * d  # not shared
    output = d * tgt_vocab + tgt_vocab
    return encoder + decoder + embeddings + output


@pytest.mark.slow
def test_encoder_decoder_base_params_follow_its_configuration():
    model = build_model("transformer", ((None,), (None,)), 10_000, preset="base")
    assert model.count_params() == encoder_decoder_params() == 59_508_496


def test_tiny_encoder_decoder_params_follow_the_same_formula():
    model = build_model("transformer", ((None,), (None,)), 30, preset="tiny",
                        norm_first=False)
    assert model.count_params() == encoder_decoder_params(8, 16, 1, 30, 30)


def test_encoder_decoder_ignores_padding_and_the_future():
    model = build_model("transformer", ((6,), (5,)), 12, preset="tiny", dropout=0.0)
    src = np.array([[3, 4, 5, 0, 0, 0]], "int32")
    tgt = np.array([[1, 7, 8, 9, 2]], "int32")
    base = keras.ops.convert_to_numpy(model([src, tgt]))
    src2 = src.copy()
    src2[0, 3:] = 0  # same padding
    tgt2 = tgt.copy()
    tgt2[0, 3:] = [5, 6]  # another future after position 2
    out = keras.ops.convert_to_numpy(model([src2, tgt2]))
    np.testing.assert_allclose(base[:, :3], out[:, :3], rtol=1e-5, atol=1e-6)
    # a padded source token's id does not matter once it is masked
    out3 = keras.ops.convert_to_numpy(model([np.array([[3, 4, 5, 0, 0, 0]], "int32"), tgt]))
    np.testing.assert_allclose(base, out3, rtol=1e-6)


def test_classifier_takes_tokens_with_vocab():
    model = build_model("transformer_classifier", (7,), 2, preset="tiny", vocab_size=20)
    y = model(np.array([[1, 2, 3, 0, 0, 0, 0]], "int32"))
    assert y.shape == (1, 2)
