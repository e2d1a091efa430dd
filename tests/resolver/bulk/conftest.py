"""The fake node that bulk-registration tests send to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.resolver.bulk.fake_node import FakeNode, serve_fake_node


@pytest.fixture
def node() -> Iterator[FakeNode]:
    """A FakeNode on a free port, served from a thread of its own."""
    with serve_fake_node() as fake:
        yield fake
