"""``python -m nodes`` is the ``idres`` command."""

from nodes.cli import main

main()
