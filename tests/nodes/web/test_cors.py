"""CORS on /api/ as HANDLE.NET answers it, HEAD beside every GET, and 404 for unknown paths (nodes.web.cors)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.nodes.web.fakes import CAR

Client = TestClient[Any, Any]


async def test_a_preflight_names_the_methods_and_headers_a_page_may_use(client: Client) -> None:
    headers = {
        "Origin": "https://portal.example",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with client.options(f"/api/handles/{CAR}", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
        assert {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} <= methods
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "Access-Control-Allow-Credentials" not in response.headers  # as HANDLE.NET


async def test_every_api_answer_carries_the_origin_header_errors_included(client: Client) -> None:
    for method, path, status in (("GET", f"/api/handles/{CAR}", 200), ("GET", "/api/nothing", 404)):
        async with client.request(method, path, headers={"Origin": "https://portal.example"}) as response:
            assert response.status == status
            assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with client.get(f"/{CAR}?noredirect") as response:  # pages are not the API: no CORS
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_head_answers_on_a_get_route_that_had_none(client: Client) -> None:
    async with client.head(f"/api/handles/{CAR}") as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
        assert await response.read() == b""


async def test_unknown_paths_are_404_in_a_handle_body_and_wrong_methods_405(client: Client) -> None:
    async with client.get("/api/nothing/here") as response:
        assert response.status == 404
        assert await response.json() == {"responseCode": 4, "message": "Unknown HTTP API endpoint /api/nothing/here"}
    async with client.post("/api/nothing") as response:
        assert response.status == 404
    async with client.post(f"/api/handles/{CAR}") as response:
        assert response.status == 405 and response.headers["Allow"] == "GET, HEAD, OPTIONS, PUT"
        assert (await response.json())["responseCode"] == 4
