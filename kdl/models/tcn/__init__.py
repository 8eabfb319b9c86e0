from kdl.models.tcn.tcn import tcn

__all__ = ["tcn"]
