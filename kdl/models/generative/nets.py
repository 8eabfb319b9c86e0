"""Encoder and decoder networks shared by the autoencoders, VAE and GANs."""

import math

import keras

KINDS = ("dense", "conv")


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def encoder_net(input_shape, out_dim, kind="dense", widths=(128,), name="encoder"):
    """Image/table -> `(out_dim,)`: Dense layers, or stride-2 3x3 convolutions."""
    _check_kind(kind)
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_inputs")
    x = inputs
    if kind == "conv":
        if len(input_shape) != 3:
            raise ValueError(f"a conv {name} needs (height, width, channels), got {input_shape}")
        for i, f in enumerate(widths):
            x = keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu",
                                    name=f"conv_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x) if len(x.shape) > 2 else x
    if kind == "dense":
        for i, u in enumerate(widths):
            x = keras.layers.Dense(u, activation="relu", name=f"dense_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(out_dim, name="out")(x), name=name)


def decoder_net(output_shape, latent_dim, kind="dense", widths=(128,), activation=None,
                batch_norm=False, name="decoder"):
    """`(latent_dim,)` -> `output_shape`: Dense layers, or 2x transposed convolutions.

    The conv decoder starts at `output_shape / 2^len(widths)` and doubles the
    resolution per width (given from the bottleneck out), so the sides must be
    divisible by `2^len(widths)`.
    """
    _check_kind(kind)
    output_shape = tuple(output_shape)
    z = keras.Input(shape=(latent_dim,), name=f"{name}_inputs")
    x = z
    if kind == "dense":
        for i, u in enumerate(widths):
            x = keras.layers.Dense(u, activation="relu", name=f"dense_{i}")(x)
        x = keras.layers.Dense(math.prod(output_shape), activation=activation, name="out")(x)
        x = keras.layers.Reshape(output_shape, name="reshape")(x)
        return keras.Model(z, x, name=name)
    if len(output_shape) != 3:
        raise ValueError(f"a conv {name} makes (height, width, channels), got {output_shape}")
    scale = 2 ** len(widths)
    h, w, c = output_shape
    if h % scale or w % scale:
        raise ValueError(f"{name}: image {h}x{w} is not divisible by 2^{len(widths)}={scale}; "
                         "use fewer conv widths or pad the images")
    x = keras.layers.Dense((h // scale) * (w // scale) * widths[0], name="project")(x)
    x = keras.layers.Reshape((h // scale, w // scale, widths[0]), name="reshape")(x)
    for i, f in enumerate(widths):
        x = keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", use_bias=not batch_norm,
                                         name=f"deconv_{i}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
    x = keras.layers.Conv2D(c, 3, padding="same", activation=activation, name="out")(x)
    return keras.Model(z, x, name=name)


def features(data):
    """The inputs of a batch that may come as `x`, `(x,)` or `(x, y)`."""
    return data[0] if isinstance(data, tuple | list) else data
