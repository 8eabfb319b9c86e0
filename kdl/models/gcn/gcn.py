"""Graph convolutional network (Kipf & Welling 2017) for node classification."""

import keras
import numpy as np
from keras import ops

from kdl.models.heads import output_head
from kdl.registry import MODELS


@keras.saving.register_keras_serializable(package="kdl")
class NormalizedAdjacency(keras.layers.Layer):
    """`A_hat = D^-1/2 (A + I) D^-1/2` for a batch of adjacency matrices `(b, n, n)`."""

    def call(self, a):
        n = ops.shape(a)[-1]
        a = a + ops.eye(n, dtype=a.dtype)[None]
        d = ops.rsqrt(ops.sum(a, axis=-1))
        return a * d[:, :, None] * d[:, None, :]


@keras.saving.register_keras_serializable(package="kdl")
class GraphConv(keras.layers.Layer):
    """One GCN layer: `activation(A_hat H W + b)`.

    Args:
        units: output width per node.
        activation: activation function.
        use_bias: add a bias.

    Call arguments:
        inputs: `[h (batch, nodes, features), a_hat (batch, nodes, nodes)]`.
    """

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias

    def build(self, input_shape):
        h_shape = input_shape[0]
        self.kernel = self.add_weight(shape=(h_shape[-1], self.units),
                                      initializer="glorot_uniform", name="kernel")
        self.bias = (self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
                     if self.use_bias else None)

    def call(self, inputs):
        h, a_hat = inputs
        out = ops.matmul(a_hat, ops.matmul(h, self.kernel))
        if self.bias is not None:
            out = out + self.bias
        return self.activation(out)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias}


def _harness_inputs(rng, batch, nodes=5, features=3):
    from kdl.data.synthetic import community_graph

    xs = []
    for b in range(batch):
        a, _ = community_graph(rng, nodes, 2, 0.8, 0.2)
        target = np.zeros((nodes, 1))
        target[b % nodes] = 1
        xs.append(np.concatenate([rng.normal(size=(nodes, features)), a, target], 1))
    return np.asarray(xs, "float32")


PRESETS = {
    "tiny": {"units": (4,)},
    "default": {"units": (32, 32), "dropout": 0.2},
}


@MODELS.register("gcn", presets=PRESETS, tasks=("classification", "regression"),
                 harness={"input_shape": (5, 3 + 5 + 1), "inputs": _harness_inputs})
def gcn(input_shape, num_outputs, *, task="classification", units=(32, 32), dropout=0.0,
        name="gcn"):
    """A GCN that classifies one target node of a graph.

    The input packs a graph and a query (the `graph_communities` layout):
    `(nodes, features + nodes + 1)` = node features, the 0/1 adjacency matrix,
    and a one-hot column marking the target node. GraphConv layers run on the
    whole graph with the normalized adjacency; the target node's embedding
    goes to the head.

    Args:
        input_shape: `(nodes, features + nodes + 1)`.
        num_outputs: classes (classification) or targets (regression).
        task: "classification" or "regression".
        units: width of each GraphConv layer (ReLU).
        dropout: dropout on node features before each layer.
    """
    if len(input_shape) != 2 or input_shape[1] <= input_shape[0] + 1:
        raise ValueError(f"gcn input is (nodes, features + nodes + 1), got {input_shape}")
    nodes = int(input_shape[0])
    features = int(input_shape[1]) - nodes - 1
    inputs = keras.Input(shape=input_shape, name="inputs")
    h = inputs[:, :, :features]
    a_hat = NormalizedAdjacency(name="a_hat")(inputs[:, :, features:features + nodes])
    target = inputs[:, :, features + nodes:]
    for i, u in enumerate(units):
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
        h = GraphConv(u, activation="relu", name=f"gcn_{i}")([h, a_hat])
    x = keras.ops.sum(h * target, axis=1)  # the target node's embedding
    return keras.Model(inputs, output_head(x, num_outputs, task), name=name)
