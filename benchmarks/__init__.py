"""Benchmarks and the data they need; run them as ``python -m benchmarks COMMAND`` (``--help`` lists them)."""

__all__: list[str] = []
