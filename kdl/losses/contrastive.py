"""Contrastive losses: SimCLR's NT-Xent and CLIP's symmetric cross-entropy."""

from keras import ops


def _normalize(x):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def _cross_entropy(logits, labels):
    logits = logits - ops.max(logits, axis=-1, keepdims=True)
    log_probs = logits - ops.log(ops.sum(ops.exp(logits), axis=-1, keepdims=True))
    return -ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def nt_xent(z1, z2, temperature=0.5):
    """SimCLR's normalized-temperature cross-entropy over 2N views.

    Row i of `z1` and row i of `z2` are two views of one example (a positive
    pair); the other 2N - 2 views in the batch are negatives. Similarities are
    cosine / temperature; each view's own similarity is excluded.

    Returns:
        The mean loss over the 2N anchors (a scalar).
    """
    n = ops.shape(z1)[0]
    z = _normalize(ops.cast(ops.concatenate([z1, z2], axis=0), "float32"))
    sim = ops.matmul(z, ops.transpose(z)) / temperature
    sim = ops.where(ops.eye(2 * n, dtype="bool"), ops.full_like(sim, -1e9), sim)
    idx = ops.arange(2 * n)
    positives = ops.where(idx < n, idx + n, idx - n)
    return ops.mean(_cross_entropy(sim, positives))


def clip_loss(image_embeddings, text_embeddings, logit_scale):
    """CLIP's symmetric contrastive loss.

    `logits = logit_scale * normalize(image) @ normalize(text)^T`; the matching
    pairs are on the diagonal. The loss is the mean of the image->text and
    text->image cross-entropies.

    Args:
        image_embeddings, text_embeddings: `(batch, dim)`.
        logit_scale: the inverse temperature, a scalar (e.g. `exp(learned)`).
    """
    a = _normalize(ops.cast(image_embeddings, "float32"))
    b = _normalize(ops.cast(text_embeddings, "float32"))
    logits = logit_scale * ops.matmul(a, ops.transpose(b))
    labels = ops.arange(ops.shape(a)[0])
    return 0.5 * (ops.mean(_cross_entropy(logits, labels))
                  + ops.mean(_cross_entropy(ops.transpose(logits), labels)))
