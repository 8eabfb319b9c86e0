from kdl.models.transformer.transformer import transformer, transformer_classifier
from kdl.models.transformer.vit import vit

__all__ = ["transformer", "transformer_classifier", "vit"]
