"""The public recursive node: resolves any identifier through the tree, with a cache and failover."""
