"""``python -m nodes`` is the ``idres`` command."""

from nodes.cli.main import main

main()
