from kdl.models.resnet.resnet import resnet

__all__ = ["resnet"]
