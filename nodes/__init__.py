"""The runnable nodes of the tree, one package per role (docs/architecture.md)."""
