"""The tests' ``free_port``: two nodes of one test topology never get the same port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tests.conftest
from tests.conftest import free_port


def test_a_port_the_kernel_gives_again_is_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may give a just-closed port to the next bind: here it gives 1,111 twice, then 2,222.
    given: Iterator[int] = iter([1111, 1111, 2222])

    class Kernel:
        def __enter__(self) -> Kernel:
            self.port = next(given)
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            assert address == ("127.0.0.1", 0)

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

    monkeypatch.setattr(tests.conftest.socket, "socket", Kernel)
    assert [free_port(), free_port()] == [1111, 2222]
