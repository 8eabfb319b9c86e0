from kdl.models.cnn.classic import alexnet, lenet5, vgg
from kdl.models.cnn.cnn import cnn

__all__ = ["alexnet", "cnn", "lenet5", "vgg"]
