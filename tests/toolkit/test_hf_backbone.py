"""A backbone from a local Hugging Face checkpoint directory (`hf:<dir>`, no network).

The test writes a tiny BERT in Hugging Face's layout itself (config.json and
model.safetensors with HF's tensor names, Linear weights stored (out, in)) and
checks KerasHub's converter put each tensor where it belongs.
"""

import json

import numpy as np
import pytest

from kdl.transfer import load_backbone

pytestmark = pytest.mark.once  # KerasHub's converter runs in NumPy; its import is slow

HIDDEN, HEADS, INTER, VOCAB, POS, LAYERS = 8, 2, 16, 32, 12, 1


def _tiny_bert(directory):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    w = lambda *shape: rng.normal(size=shape).astype("float32")  # noqa: E731
    tensors = {
        "embeddings.word_embeddings.weight": w(VOCAB, HIDDEN),
        "embeddings.position_embeddings.weight": w(POS, HIDDEN),
        "embeddings.token_type_embeddings.weight": w(2, HIDDEN),
        "embeddings.LayerNorm.weight": w(HIDDEN), "embeddings.LayerNorm.bias": w(HIDDEN),
        "pooler.dense.weight": w(HIDDEN, HIDDEN), "pooler.dense.bias": w(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            tensors[p + name + ".weight"] = w(HIDDEN, HIDDEN)
            tensors[p + name + ".bias"] = w(HIDDEN)
        tensors[p + "intermediate.dense.weight"] = w(INTER, HIDDEN)
        tensors[p + "intermediate.dense.bias"] = w(INTER)
        tensors[p + "output.dense.weight"] = w(HIDDEN, INTER)
        tensors[p + "output.dense.bias"] = w(HIDDEN)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + ln + ".weight"] = w(HIDDEN)
            tensors[p + ln + ".bias"] = w(HIDDEN)
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "intermediate_size": INTER, "max_position_embeddings": POS, "type_vocab_size": 2,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
    return tensors


def _np(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def test_hf_bert_checkpoint_loads_with_the_written_weights(tmp_path):
    import keras_hub

    hf = _tiny_bert(tmp_path / "tiny-bert")
    backbone = load_backbone(f"hf:{tmp_path / 'tiny-bert'}")
    assert isinstance(backbone, keras_hub.models.BertBackbone)
    assert (backbone.hidden_dim, backbone.num_layers) == (HIDDEN, LAYERS)

    np.testing.assert_array_equal(_np(backbone.token_embedding.embeddings),
                                  hf["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(
        _np(backbone.position_embedding.position_embeddings),
        hf["embeddings.position_embeddings.weight"])
    # HF Linear stores (out, in); Keras's attention kernel is (in, heads, head_dim).
    attention = backbone.transformer_layers[0]._self_attention_layer
    np.testing.assert_array_equal(
        _np(attention.query_dense.kernel),
        hf["encoder.layer.0.attention.self.query.weight"].T.reshape(HIDDEN, HEADS, -1))
    np.testing.assert_array_equal(_np(attention.key_dense.bias),
                                  hf["encoder.layer.0.attention.self.key.bias"].reshape(HEADS, -1))
    np.testing.assert_array_equal(_np(backbone.get_layer("pooled_dense").kernel),
                                  hf["pooler.dense.weight"].T)

    # It is a working feature extractor.
    out = backbone({"token_ids": np.array([[2, 5, 7, 0]]), "segment_ids": np.zeros((1, 4), "int32"),
                    "padding_mask": np.array([[1, 1, 1, 0]])})
    assert out["sequence_output"].shape == (1, 4, HIDDEN)
    assert np.isfinite(_np(out["pooled_output"])).all()


def test_a_directory_that_is_not_an_hf_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_backbone(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face checkpoint.*model.safetensors"):
        load_backbone(f"hf:{tmp_path / 'empty'}")
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "config.json").write_text('{"registered_name": "x"}')
    (tmp_path / "keras" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no 'model_type'"):
        load_backbone(f"hf:{tmp_path / 'keras'}")
