"""Before any batch (resolver.bulk.preflight): a --server without a scheme is refused naming the fix, and
an address where nothing listens stops the run in seconds instead of being retried."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from resolver.bulk.preflight import url_problem
from resolver.bulk.sender import RetryPolicy
from tests.conftest import free_port
from tests.resolver.bulk.cars import write_csv
from tests.resolver.bulk.fake_node import FakeNode
from tests.resolver.bulk.runs import options, run_quietly


@pytest.mark.parametrize(
    ("server", "words"),
    [
        ("127.0.0.1:8300", "127.0.0.1:8300 has no scheme: did you mean http://127.0.0.1:8300"),
        ("localhost:8300", "localhost:8300 has no scheme: did you mean http://localhost:8300"),
        ("ftp://127.0.0.1:8300", "has the scheme 'ftp': use http:// or https://"),
        ("http://", "names no host"),
        ("http://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
        ("http://127.0.0.1:8300/?x=1", "without a query"),
    ],
)
def test_a_server_that_is_no_base_url_is_named_with_the_fix(server: str, words: str) -> None:
    problem = url_problem(server)
    assert problem is not None and words in problem


@pytest.mark.parametrize("server", ["http://127.0.0.1:8300", "https://registry.example.cn/", "http://[::1]:8300"])
def test_base_urls_pass(server: str) -> None:
    assert url_problem(server) is None


def test_no_scheme_stops_before_anything_is_sent(node: FakeNode, tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url.removeprefix("http://")))
    assert code == 2 and f"did you mean {node.url}" in out
    assert node.requests == 0 and not node.records


def test_a_refused_port_fails_in_seconds_naming_the_server(tmp_path: Path) -> None:
    write_csv(tmp_path / "cars.csv", 10)
    server = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    # The default retries would ride out 30 s of a node that went away mid-load: none of it is spent here.
    code, out = run_quietly(options(tmp_path / "cars.csv", server, policy=RetryPolicy()))
    assert code == 2 and time.monotonic() - started < 5
    assert f"cannot reach {server}: cannot connect" in " ".join(out.split())
    assert "nothing to resume" in out and "--resume" not in out
    assert not (tmp_path / "cars.csv.idres-checkpoint").exists()


def test_any_http_answer_is_reachable_enough(node: FakeNode, tmp_path: Path) -> None:
    # FakeNode has no /healthz (404): the batches go on, and the batch endpoint says the rest.
    write_csv(tmp_path / "cars.csv", 10)
    code, out = run_quietly(options(tmp_path / "cars.csv", node.url))
    assert code == 0, out
    assert len(node.records) == 10
