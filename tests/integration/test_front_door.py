"""The front door as issue 14 asks it of ``idres up``: a person's browser or a scanned label opening
``http://RECURSIVE/IDENTIFIER`` on the running default topology (free ports), through the real node
processes, the recursive node's cache and its walk."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse

import pytest

from nodes.running.seeding import DEMO_CAR, DEMO_PACK
from tests.processes import Running, copy_topology, start_up, stop

pytestmark = pytest.mark.integration

CAR_URL = "https://automaker.example.cn/vehicles/LFV3A23C5K3000417"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 302 itself is what is looked at


_opener = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Status, headers and body text of ``url``, without following a redirect (as ``curl -sI``)."""
    request = urllib.request.Request(url, method=method)
    try:
        response: HTTPResponse = _opener.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode("utf-8", "replace")
    with response:
        return response.status, dict(response.headers), response.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    base = tmp_path_factory.mktemp("front")
    running = start_up(base / "data", copy_topology(base / "topology.toml"))
    yield running
    stop(running)


def test_the_car_opened_in_a_browser_redirects_to_its_url(tree: Running) -> None:
    status, headers, _ = fetch(f"{tree.urls['recursive']}/{DEMO_CAR}", "HEAD")
    assert status == 302
    assert headers["Location"] == CAR_URL
    assert headers["Cache-Control"].startswith("max-age=")


def test_noredirect_lists_the_values_and_links_the_battery_pack_to_its_own_page(tree: Running) -> None:
    status, headers, page = fetch(f"{tree.urls['recursive']}/{DEMO_CAR}?noredirect")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert DEMO_CAR in page and CAR_URL in page and "COMPONENT" in page
    pack_link = f'href="/{DEMO_PACK}?noredirect"'
    assert pack_link in page, "the COMPONENT value links to the battery pack's page"
    status, _, pack_page = fetch(f"{tree.urls['recursive']}/{DEMO_PACK}?noredirect")
    assert status == 200 and DEMO_PACK in pack_page


def test_an_unknown_identifier_is_a_404_page_that_says_so(tree: Running) -> None:
    status, headers, page = fetch(f"{tree.urls['recursive']}/88.118.8/NO-SUCH")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "88.118.8/NO-SUCH" in page


def test_the_api_answers_browsers_cors_and_head_and_unknown_paths_404(tree: Running) -> None:
    status, headers, _ = fetch(f"{tree.urls['recursive']}/api/handles/{DEMO_CAR}", "HEAD")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    status, headers, _ = fetch(f"{tree.urls['recursive']}/api/handles/{DEMO_CAR}", "OPTIONS")
    assert status in (200, 204) and "GET" in headers["Access-Control-Allow-Methods"]
    status, _, body = fetch(f"{tree.urls['recursive']}/api/nothing")
    assert status == 404 and "Unknown HTTP API endpoint" in body
    status, _, body = fetch(f"{tree.urls['automaker']}/api/nothing")
    assert status == 404 and "Unknown HTTP API endpoint" in body
