"""Generated datasets: sequence tasks and graphs with community structure.

They are seeded, need no download, and are small enough to train on in
seconds on a CPU; the zoo's sequence and graph recipes use them.
"""

from __future__ import annotations

import numpy as np

from kdl.data.core import RawData
from kdl.registry import DATASETS


@DATASETS.register("sine_classes", task="classification", input="sequence 32x1")
def sine_classes(n: int = 1500, length: int = 32, classes: int = 3, noise: float = 0.6,
                 seed: int = 0) -> RawData:
    """Noisy sine waves; the class is the frequency (1, 2, ... cycles per sequence
    times 1.5), the phase and amplitude are random. Input `(length, 1)`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    x = amp * np.sin(2 * np.pi * 1.5 * (y[:, None] + 1) * t[None] + phase)
    x = x + noise * rng.normal(size=x.shape)
    return RawData(x[..., None].astype("float32"), y, "classification",
                   [f"{1.5 * (k + 1):g} cycles" for k in range(classes)])


@DATASETS.register("adding", task="regression", input="sequence 30x2")
def adding(n: int = 2000, length: int = 30, seed: int = 0) -> RawData:
    """The adding problem (Hochreiter & Schmidhuber 1997): channel 0 holds values in
    [0, 1], channel 1 marks two positions; the target is the sum of the two marked
    values. Predicting the mean (1.0) gives R^2 = 0."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (n, length))
    marks = np.zeros((n, length))
    first = rng.integers(0, length // 2, n)
    second = rng.integers(length // 2, length, n)
    marks[np.arange(n), first] = 1.0
    marks[np.arange(n), second] = 1.0
    y = (values * marks).sum(1, keepdims=True)
    return RawData(np.stack([values, marks], -1).astype("float32"), y.astype("float32"),
                   "regression")


@DATASETS.register("reverse_tokens", task="classification", inputs=2,
                   input="token pairs (source 8, target_in 8)")
def reverse_tokens(n: int = 4000, length: int = 8, symbols: int = 10, seed: int = 0) -> RawData:
    """Reverse a random token sequence: a seq2seq task with two token inputs.

    Ids: 0 is padding, 1 the start token, `2 .. symbols + 1` the symbols.
    `x = (source, target_in)`, both `(n, length)` int32: `source` is random
    symbols, `target_in` is the reversed source shifted right behind the start
    token (teacher forcing); `y` is the reversed source `(n, length)`, a class
    per position. `info["start_id"]` is what greedy decoding starts from. With
    10 symbols and length 8 there are 10^8 sequences, so test sequences are
    (almost surely) unseen; a model that copies the source scores 2/8 per token.
    """
    rng = np.random.default_rng(seed)
    source = rng.integers(2, symbols + 2, size=(n, length))
    target = source[:, ::-1]
    target_in = np.concatenate([np.ones((n, 1), source.dtype), target[:, :-1]], 1)
    names = ["<pad>", "<start>", *(str(k) for k in range(symbols))]
    return RawData((source.astype("int32"), target_in.astype("int32")),
                   target.astype("int32"), "classification", names,
                   info={"start_id": 1})


def community_graph(rng, nodes: int, communities: int, p_in: float, p_out: float):
    """A stochastic block model graph: `(adjacency (nodes, nodes), community ids)`."""
    c = np.sort(rng.integers(0, communities, nodes))
    p = np.where(c[:, None] == c[None, :], p_in, p_out)
    upper = np.triu(rng.uniform(size=(nodes, nodes)) < p, 1)
    a = (upper | upper.T).astype("float32")
    return a, c


@DATASETS.register("graph_communities", task="classification", input="graph 20 nodes")
def graph_communities(graphs: int = 120, nodes: int = 20, communities: int = 3,
                      features: int = 4, p_in: float = 0.8, p_out: float = 0.05,
                      signal: float = 1.0, seed: int = 0) -> RawData:
    """Node classification on stochastic-block-model graphs with community structure.

    Each node's features are a weak, noisy hint of its community (a one-hot of
    strength `signal` plus unit Gaussian noise); its neighbours share the
    community, so aggregating over the graph (a GCN) beats reading the node
    alone (an MLP). With the defaults, the argmax of a node's own hint is right
    62% of the time, that of its 2-hop GCN-normalized average 90%. One example per (graph, node):
    `x = [node features (nodes, features) | adjacency (nodes, nodes) | one-hot of
    the target node (nodes, 1)]`, shape `(nodes, features + nodes + 1)`;
    `y` is the target node's community. Use `normalize: false` (the adjacency
    must stay 0/1); the `gcn` model splits the columns back.
    """
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(graphs):
        a, c = community_graph(rng, nodes, communities, p_in, p_out)
        f = rng.normal(size=(nodes, features))
        f[np.arange(nodes), c % features] += signal
        for v in range(nodes):
            target = np.zeros((nodes, 1))
            target[v] = 1.0
            xs.append(np.concatenate([f, a, target], 1))
            ys.append(c[v])
    return RawData(np.asarray(xs, "float32"), np.asarray(ys), "classification",
                   [f"community {k}" for k in range(communities)])


CREDIT_FEATURES = ("income", "debt", "years_employed", "credit_history", "savings", "age")


@DATASETS.register("biased_credit", task="classification", input="table 6 (+1) features",
                   columns=("group",))
def biased_credit(n: int = 4000, bias: float = 1.0, proxy: float = 0.5,
                  include_group: bool = False, seed: int = 0) -> RawData:
    """Loan decisions with historical bias against a group, for fairness reports.

    Each applicant belongs to group "A" (60%) or "B" (40%, the `group` column).
    The label (1 = "approved") is a noisy threshold of a merit score of the
    features, minus `bias` for group B: past decisions that penalized B. Group B's
    income is lower by `proxy` standard deviations, so income is a proxy for the
    group even when the group is not a feature (`include_group=False`, default;
    True appends it as a 0/1 feature named `group`). Seeded.
    """
    rng = np.random.default_rng(seed)
    group = np.where(rng.uniform(size=n) < 0.4, "B", "A")
    b = (group == "B").astype("float32")
    f = rng.normal(size=(n, len(CREDIT_FEATURES))).astype("float32")
    f[:, 0] -= proxy * b
    merit = 1.0 * f[:, 0] - 0.8 * f[:, 1] + 0.5 * f[:, 2] + 0.7 * f[:, 3] + 0.3 * f[:, 4]
    y = (merit - bias * b + rng.normal(scale=0.5, size=n) > -0.2).astype("int32")
    names = list(CREDIT_FEATURES)
    if include_group:
        f, names = np.concatenate([f, b[:, None]], axis=1), [*names, "group"]
    return RawData(f, y, "classification", ["denied", "approved"],
                   info={"feature_names": names}, columns={"group": group})
