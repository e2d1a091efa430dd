"""``python -m benchmarks tls`` runs end to end with tiny numbers: two topologies, one on HTTPS, figures for both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.tls import main
from benchmarks.topology import cluster


def test_tls_cannot_be_asked_of_nodes_that_already_run() -> None:
    with pytest.raises(ValueError, match="running"), cluster(running=True, tls=True):
        pass


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_tiny_run_reports_plain_and_tls_figures_without_failures(tmp_path: Path) -> None:
    out = tmp_path / "tls.json"
    argv = ["--identifiers", "200", "--duration", "1", "--rounds", "1", "--cold-samples", "20"]
    assert main([*argv, "--cold-warmup", "5", "--connections", "8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for mode in ("hot_keepalive", "new_connection"):
        for variant in ("plain", "tls"):
            figures = result[mode][variant]
            assert figures["rps_median"] > 0, (mode, variant)
            assert figures["failed"] == 0 and figures["non_2xx"] == 0, (mode, variant, figures)
        assert "https://" in result[mode]["tls"]["command"] and "http://" in result[mode]["plain"]["command"]
        assert result[mode]["ratio"] > 0
    assert "Connection: close" in result["new_connection"]["tls"]["command"]
    cold = result["cold_three_level"]
    for variant, scheme in (("plain", "http"), ("tls", "https")):
        assert cold[variant]["count"] == 20 and cold[variant]["p50"] > 0 and cold[variant]["failed"] == 0
        # Every request walked top -> secondary -> enterprise, on the topology's own scheme.
        assert cold[variant]["upstream_queries_per_request"] == 3
        assert set(cold[variant]["upstream_queries_by_scheme"]) == {scheme}
