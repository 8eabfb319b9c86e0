from kdl.models.gcn.gcn import GraphConv, NormalizedAdjacency, gcn

__all__ = ["GraphConv", "NormalizedAdjacency", "gcn"]
