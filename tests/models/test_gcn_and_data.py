"""GCN against a NumPy oracle; the generated datasets have the structure they claim."""

import keras
import numpy as np

from kdl.data import load_splits
from kdl.data.synthetic import adding, community_graph, graph_communities, sine_classes
from kdl.models import build_model
from kdl.models.gcn import GraphConv, NormalizedAdjacency


def test_normalized_adjacency_and_graph_conv_match_numpy():
    rng = np.random.default_rng(0)
    a, _ = community_graph(rng, 6, 2, 0.7, 0.1)
    h = rng.normal(size=(1, 6, 3)).astype("float32")
    a_hat = keras.ops.convert_to_numpy(NormalizedAdjacency()(a[None]))[0]
    at = a + np.eye(6)
    d = np.diag(1 / np.sqrt(at.sum(1)))
    np.testing.assert_allclose(a_hat, d @ at @ d, rtol=1e-5, atol=1e-6)
    conv = GraphConv(2)
    out = keras.ops.convert_to_numpy(conv([h, a_hat[None]]))[0]
    ref = a_hat @ h[0] @ keras.ops.convert_to_numpy(conv.kernel)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_gcn_reads_the_target_node_and_its_neighbourhood_only():
    nodes, feats = 5, 2
    model = build_model("gcn", (nodes, feats + nodes + 1), 3, preset="tiny")
    a = np.zeros((nodes, nodes), "float32")
    a[0, 1] = a[1, 0] = 1.0  # nodes 0-1 linked; node 4 is far from 0
    f = np.random.default_rng(1).normal(size=(nodes, feats)).astype("float32")
    target = np.zeros((nodes, 1), "float32")
    target[0] = 1
    x = np.concatenate([f, a, target], 1)[None]
    x2 = x.copy()
    x2[0, 4, :feats] += 5.0  # change a node outside the 1-hop neighbourhood of node 0
    p1, p2 = (keras.ops.convert_to_numpy(model(v)) for v in (x, x2))
    np.testing.assert_allclose(p1, p2, rtol=1e-6)  # tiny preset: one layer, one hop
    x3 = x.copy()
    x3[0, 1, :feats] += 5.0  # a neighbour
    assert not np.allclose(p1, keras.ops.convert_to_numpy(model(x3)))


def test_graph_communities_are_dense_inside_and_sparse_across():
    raw = graph_communities(graphs=4, nodes=16, seed=0)
    assert raw.x.shape == (64, 16, 4 + 16 + 1) and raw.y.shape == (64,)
    a = raw.x[0, :, 4:20]
    c = raw.y[:16]
    same = c[:, None] == c[None, :]
    np.fill_diagonal(same, False)
    assert a[same].mean() > 4 * a[~same & ~np.eye(16, dtype=bool)].mean()
    assert np.allclose(a, a.T) and raw.x[:16, :, -1].sum(1).tolist() == [1.0] * 16


def test_sequence_datasets():
    raw = sine_classes(n=30)
    assert raw.x.shape == (30, 32, 1) and set(raw.y) <= {0, 1, 2}
    add = adding(n=20)
    assert add.x.shape == (20, 30, 2) and np.all(add.x[..., 1].sum(1) == 2)
    np.testing.assert_allclose(add.y[:, 0], (add.x[..., 0] * add.x[..., 1]).sum(1), rtol=1e-6)
    splits = load_splits("adding", normalize=False)
    assert splits.task == "regression" and splits.input_shape == (30, 2)
