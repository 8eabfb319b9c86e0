from kdl.models.mlp.mlp import mlp

__all__ = ["mlp"]
