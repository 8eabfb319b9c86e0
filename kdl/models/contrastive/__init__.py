from kdl.models.contrastive.clip import CLIP, clip
from kdl.models.contrastive.simclr import SimCLR, augment, simclr

__all__ = ["CLIP", "SimCLR", "augment", "clip", "simclr"]
