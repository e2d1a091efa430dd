"""The authoritative node: top-level, secondary and enterprise nodes are configurations of it."""
