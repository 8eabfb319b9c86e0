"""Greedy autoregressive decoding for the encoder-decoder models (`seq2seq`, `transformer`)."""

import keras
import numpy as np


def greedy_decode(model, source, start_id: int, steps: int):
    """Greedy decoding: feed back the argmax token, one position at a time.

    The decoder input has a fixed length (the model's target length, or
    `steps` when that is free), start token first and zeros (padding) after
    the tokens decoded so far; step t reads the prediction at position t and
    writes it at t + 1. Both decoders are causal (the LSTM by construction, the
    Transformer by its causal mask), so the positions after t do not change
    what position t predicts: the result equals growing the input a token per
    step, while every call has one shape (JAX and TensorFlow trace once).

    Args:
        model: a model taking `[source_ids, target_in_ids]` and returning a
            softmax per target position.
        source: `(batch, source_len)` token ids.
        start_id: the start token.
        steps: tokens to decode.

    Returns:
        `(batch, steps)` token ids (the start token left out).
    """
    source = np.asarray(source, "int32")
    length = model.inputs[1].shape[1] if len(model.inputs) > 1 else None
    length = steps if length is None else int(length)
    if steps > length:
        raise ValueError(f"the model's decoder takes {length} tokens; cannot decode "
                         f"{steps} steps (build it with target length None or >= {steps})")
    tokens = np.zeros((len(source), length), "int32")
    tokens[:, 0] = start_id
    out = np.zeros((len(source), steps), "int32")
    for t in range(steps):
        probs = keras.ops.convert_to_numpy(model([source, tokens], training=False))
        out[:, t] = probs[:, t].argmax(-1)
        if t + 1 < length:
            tokens[:, t + 1] = out[:, t]
    return out
