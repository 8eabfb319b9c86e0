from kdl.models.cnn.cnn import cnn

__all__ = ["cnn"]
