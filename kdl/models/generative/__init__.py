from kdl.models.generative.autoencoder import VAE, Autoencoder, autoencoder, vae
from kdl.models.generative.ddpm import DDPM, beta_schedule, ddpm
from kdl.models.generative.gan import GAN, dcgan, gan

__all__ = ["DDPM", "GAN", "VAE", "Autoencoder", "autoencoder", "beta_schedule", "dcgan", "ddpm",
           "gan", "vae"]
