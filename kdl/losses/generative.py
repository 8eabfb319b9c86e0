"""VAE evidence lower bound and the GAN's logistic losses."""

from keras import ops


def gaussian_kl(mean, log_var):
    """`KL(N(mean, exp(log_var)) || N(0, I))` per example, summed over latent dims."""
    mean, log_var = ops.convert_to_tensor(mean), ops.convert_to_tensor(log_var)
    return -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)


def vae_elbo(x, reconstruction, mean, log_var, likelihood="gaussian"):
    """The ELBO per example: `E[log p(x|z)] - KL(q(z|x) || p(z))`, one z sample.

    Args:
        x: data, `(batch, ...)`.
        reconstruction: decoder output for the sampled z: the mean of a unit-variance
            Gaussian (`likelihood="gaussian"`) or Bernoulli logits ("bernoulli",
            x in [0, 1]).
        mean, log_var: the encoder's `q(z|x)`, `(batch, latent)`.
        likelihood: "gaussian" or "bernoulli".

    Returns:
        `(elbo, log_likelihood, kl)`, each `(batch,)`; the training loss is
        `-mean(elbo)`. The Gaussian log-likelihood keeps its constant
        `-0.5 log(2 pi)` per dimension, so the ELBO is a true bound.
    """
    x, reconstruction = ops.convert_to_tensor(x), ops.convert_to_tensor(reconstruction)
    axes = tuple(range(1, len(x.shape)))
    if likelihood == "gaussian":
        ll = -0.5 * ops.sum(ops.square(x - reconstruction) + ops.log(2.0 * 3.141592653589793),
                            axis=axes)
    elif likelihood == "bernoulli":
        ll = -ops.sum(bce_with_logits(x, reconstruction), axis=axes)
    else:
        raise ValueError(f"likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
    kl = gaussian_kl(mean, log_var)
    return ll - kl, ll, kl


def bce_with_logits(labels, logits):
    """Elementwise binary cross-entropy from logits, numerically stable."""
    labels, logits = ops.convert_to_tensor(labels), ops.convert_to_tensor(logits)
    return ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
