"""The side-by-side benchmark's stub answer is a record the resolver accepts, and its node script runs."""

from __future__ import annotations

from benchmarks.compare import _RECORD, _SERVE
from resolver.resolution import Answer, classify


def test_the_stub_answer_is_an_answer_with_every_value() -> None:
    outcome = classify(200, {"responseCode": 1, "handle": "88.118.8/AB-0000001", "values": _RECORD})
    assert isinstance(outcome, Answer)
    assert [v.type for v in outcome.values] == ["URL", "MODEL", "BATCH", "HS_ADMIN"]


def test_the_node_script_compiles_and_finds_serve_node_in_this_layout() -> None:
    compile(_SERVE, "<compare>", "exec")
    from nodes.running.serve import serve_node

    assert callable(serve_node)
