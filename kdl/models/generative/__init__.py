from kdl.models.generative.autoencoder import VAE, Autoencoder, autoencoder, vae
from kdl.models.generative.ddpm import DDPM, beta_schedule, ddpm
from kdl.models.generative.gan import GAN, dcgan, gan
from kdl.models.generative.grid import save_image_grid
from kdl.models.generative.quality import classifier_confidence

__all__ = ["DDPM", "GAN", "VAE", "Autoencoder", "autoencoder", "beta_schedule",
           "classifier_confidence", "dcgan", "ddpm", "gan", "save_image_grid", "vae"]
