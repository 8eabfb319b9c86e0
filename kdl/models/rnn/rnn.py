"""Recurrent stacks (SimpleRNN/LSTM/GRU) and an LSTM seq2seq with additive attention."""

import keras

from kdl.layers import BahdanauAttention, PaddingMask
from kdl.models.decoding import greedy_decode
from kdl.models.heads import output_head
from kdl.registry import MODELS

CELLS = {"simple": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
POOLS = ("last", "mean", "max")

PRESETS = {
    "tiny": {"cell": "lstm", "units": (4,), "bidirectional": True},
    "default": {"cell": "lstm", "units": (64, 64), "dropout": 0.1},
}


@MODELS.register("rnn", presets=PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (5, 3)})
def rnn(input_shape, num_outputs, *, task="classification", cell="lstm", units=(64,),
        bidirectional=False, pool="last", dropout=0.0, name="rnn"):
    """A stack of recurrent layers over a `(length, features)` sequence, then a head.

    Args:
        input_shape: `(length, features)`; length may be None.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        cell: "simple" (SimpleRNN), "lstm" or "gru".
        units: width of each recurrent layer.
        bidirectional: wrap each layer in `Bidirectional` (concatenated).
        pool: the head reads the "last" step, or the "mean"/"max" over steps.
        dropout: dropout between layers and before the head.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if len(input_shape) != 2:
        raise ValueError(f"rnn needs sequence input (length, features), got {input_shape}")
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for i, u in enumerate(units):
        last = i == len(units) - 1
        layer = CELLS[cell](u, return_sequences=not (last and pool == "last"),
                            name=f"{cell}_{i}")
        if bidirectional:
            layer = keras.layers.Bidirectional(layer, name=f"bi{cell}_{i}")
        x = layer(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    if pool == "mean":
        x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    elif pool == "max":
        x = keras.layers.GlobalMaxPooling1D(name="pool")(x)
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)


SEQ2SEQ_PRESETS = {
    "tiny": {"embedding_dim": 4, "units": 8, "attention_units": 4},
    "default": {"embedding_dim": 32, "units": 128, "attention_units": 64},
}


@MODELS.register("seq2seq", presets=SEQ2SEQ_PRESETS, tasks=("classification",),
                 decode=greedy_decode,
                 harness={"input_shape": [(6,), (5,)], "vocab": 12, "num_outputs": 12,
                          "output_shape": (5, 12)})
def seq2seq(input_shape, num_outputs, *, task="classification", source_vocab=None,
            embedding_dim=32, units=128, attention_units=64, name="seq2seq"):
    """Encoder-decoder LSTM with additive (Bahdanau) attention, trained by teacher forcing.

    A bidirectional LSTM encodes the source; the decoder LSTM starts from the
    encoder's final states and reads the target shifted right (teacher forcing);
    at each step additive attention over the encoder states gives a context
    that is concatenated with the decoder state before the softmax. (The score
    uses the decoder state at step t, Luong's placement of Bahdanau's score.)

    Args:
        input_shape: `((source_len,), (target_len,))` token ids; id 0 is padding.
        num_outputs: target vocabulary size.
        task: "classification" (a softmax per target token).
        source_vocab: source vocabulary size (default: `num_outputs`).
        embedding_dim, units, attention_units: widths.
    """
    if task != "classification":
        raise ValueError("seq2seq predicts tokens: task must be 'classification'")
    if len(input_shape) != 2:
        raise ValueError("seq2seq takes ((source_len,), (target_len,))")
    source = keras.Input(shape=tuple(input_shape[0]), dtype="int32", name="source")
    target = keras.Input(shape=tuple(input_shape[1]), dtype="int32", name="target")
    source_mask = PaddingMask(name="source_padding_mask")(source)
    s = keras.layers.Embedding(source_vocab or num_outputs, embedding_dim,
                               name="source_embedding")(source)
    enc, fh, fc, bh, bc = keras.layers.Bidirectional(
        keras.layers.LSTM(units, return_sequences=True, return_state=True),
        name="encoder")(s)
    h = keras.layers.Dense(units, activation="tanh", name="bridge_h")(
        keras.layers.Concatenate(name="final_h")([fh, bh]))
    c = keras.layers.Dense(units, name="bridge_c")(
        keras.layers.Concatenate(name="final_c")([fc, bc]))
    t = keras.layers.Embedding(num_outputs, embedding_dim, name="target_embedding")(target)
    dec = keras.layers.LSTM(units, return_sequences=True, name="decoder")(
        t, initial_state=[h, c])
    context, _ = BahdanauAttention(attention_units, name="attention")(
        dec, enc, value_mask=source_mask)
    x = keras.layers.Concatenate(name="state_and_context")([dec, context])
    x = keras.layers.Dense(units, activation="tanh", name="attentional")(x)
    return keras.Model([source, target], output_head(x, num_outputs, task), name=name)
