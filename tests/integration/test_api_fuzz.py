"""Schemathesis against real nodes: every operation of /api/openapi.json, no 5xx and answers as described."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from resolver.client import basic_auth
from tests.processes import Running, copy_topology, get_json, start_up, stop

# Examples per operation and generation mode: 11 operations x 2 modes x 3 runs stays well under a minute.
# IDRES_FUZZ_EXAMPLES=100 hunts longer (about two minutes).
EXAMPLES = int(os.environ.get("IDRES_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# What the recursive node serves (it does not forward batches, sessions or replication).
RECURSIVE_PATHS = ["/api/handles/{handle}", "/api/handles", "/healthz", "/api/openapi.json"]


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("fuzz-data")
    running = start_up(data / "data", copy_topology(data / "topology.toml"))
    yield running
    stop(running)


def fuzz(schema: schemathesis.BaseSchema, base_url: str, headers: dict[str, str] | None = None) -> None:
    """Run every operation of ``schema`` with valid and invalid inputs; fail on the first broken check."""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Case) -> None:
                # A long poll waits for a write or up to 30 s: valid, but not what a fuzzer should spend time on.
                if case.query:
                    case.query.pop("wait", None)
                case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (an operation without parameters or body, e.g. /healthz).
                assert mode is GenerationMode.NEGATIVE, operation.label


def load(url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(url + "/api/openapi.json")


def test_authoritative_node_anonymous(topology: Running) -> None:
    url = topology.urls["automaker"]
    fuzz(load(url), url)


def test_authoritative_node_as_its_operator(topology: Running) -> None:
    url = topology.urls["automaker"]
    headers = {"Authorization": basic_auth("300:0.NA/88.118.8", topology.secret("automaker"))}
    # Promotion and fencing with the operator's credentials change the node's role, which is not fuzzing.
    schema = load(url).exclude(path_regex="^/api/replication/(promote|fence)$")
    fuzz(schema, url, headers)


def test_recursive_node(topology: Running) -> None:
    url = topology.urls["recursive"]
    fuzz(load(url).include(path=RECURSIVE_PATHS), url)


def test_schema_is_served_from_the_package(topology: Running) -> None:
    schema = load(topology.urls["recursive"])
    assert schema.raw_schema["info"]["title"] == "idres REST API"
    assert Path(__file__).resolve().parents[2].joinpath("docs", "openapi.yaml").is_file()


@pytest.mark.parametrize("node", ["automaker", "recursive"])
def test_line_break_in_a_handle_path(topology: Running, node: str) -> None:
    """Found by the fuzzer: ``.`` in the route did not match %0A, so the node answered 405 "Unknown HTTP API
    endpoint" (authoritative) or a plain-text 404 (recursive) instead of an invalid handle."""
    status, answer = get_json(topology.urls[node] + "/api/handles/88.118.8/VIN%0A1")
    assert (status, answer["responseCode"]) == (400, 102), answer
    assert "control character U+000A" in answer["message"]
