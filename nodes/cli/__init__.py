"""The ``idres`` command line."""
