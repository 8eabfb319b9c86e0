"""Losses of the zoo's custom-training models (keras.ops only, any backend)."""

from kdl.losses.contrastive import clip_loss, nt_xent
from kdl.losses.generative import bce_with_logits, gaussian_kl, vae_elbo

__all__ = ["bce_with_logits", "clip_loss", "gaussian_kl", "nt_xent", "vae_elbo"]
