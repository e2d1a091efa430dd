"""Fixtures that run real node processes (started with the helpers of ``tests/processes.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.processes import Running, start_up, stop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def topology_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The README's first command: `idres up` with the default topology on its default ports."""
    running = start_up(tmp_path_factory.mktemp("idres-data"))
    yield running
    stop(running)
