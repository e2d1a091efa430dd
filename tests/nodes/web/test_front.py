"""The proxy's answers (nodes.web.front) over a fake lookup: redirects, parameters, pages and errors."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from tests.nodes.web.fakes import ADMIN, CAR, CAR_URL, PACK, FakeLookup, front_app, string

Client = TestClient[Any, Any]


async def get(client: Client, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    async with client.request(method, path, allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.text()


async def test_an_identifier_redirects_to_its_url_with_cache_headers_from_the_ttl(client: Client) -> None:
    status, headers, body = await get(client, f"/{CAR}")
    assert status == 302
    assert headers["Location"] == CAR_URL
    assert headers["Cache-Control"] == "max-age=3600"  # the URL value's TTL
    expires = parsedate_to_datetime(headers["Expires"]).timestamp()
    assert 3_000 < expires - parsedate_to_datetime(headers["Date"]).timestamp() <= 3_601
    assert CAR_URL in body  # the short HTML body, for clients that do not follow


async def test_head_answers_the_redirect_without_a_body(client: Client) -> None:
    status, headers, body = await get(client, f"/{CAR}", "HEAD")
    assert (status, headers["Location"], body) == (302, CAR_URL, "")


async def test_noredirect_shows_the_values_with_links(client: Client, lookup: FakeLookup) -> None:
    status, headers, body = await get(client, f"/{CAR}?noredirect")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert (
        "script-src" not in headers["Content-Security-Policy"]
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    assert f'<a class="url" href="{CAR_URL}">' in body
    assert f'<a class="handle" href="/{PACK}?noredirect">{PACK}</a>' in body  # the COMPONENT
    assert "CQ-EV7 electric SUV" in body and "1 h" in body and "2026-11-18 11:06:40 UTC" in body  # TTL and timestamp
    assert "<details>" in body and "HS_ADMIN" in body.split("<details>")[1]  # administrative values collapsed
    assert "top (Beijing)" in body and "referral" in body and "2.5 ms" in body  # the trace
    assert "top mirror (Guangzhou)" in body and "timed out" in body  # the topology panel
    assert f'<img src="/{CAR}?qr=svg"' in body and f'href="/{CAR}?qr=png"' in body
    assert lookup.calls == [(CAR, False)]


async def test_type_index_and_urlappend_choose_the_target(lookup: FakeLookup) -> None:
    lookup.records["88.1/DOCS"] = (string(1, "URL", "https://a/"), string(2, "MANUAL", "https://manual/"))
    async with TestClient(TestServer(front_app(lookup))) as client:
        assert (await get(client, "/88.1/DOCS?type=MANUAL"))[1]["Location"] == "https://manual/"
        assert (await get(client, "/88.1/DOCS?index=2"))[1]["Location"] == "https://manual/"
        assert (await get(client, "/88.1/DOCS?urlappend=%3Flang%3Dzh"))[1]["Location"] == "https://a/?lang=zh"
        status, _, body = await get(client, "/88.1/DOCS?type=NOPE")
        assert status == 200 and "No value matches the type or index" in body


async def test_auth_resolves_at_the_primary(client: Client, lookup: FakeLookup) -> None:
    status, _, body = await get(client, f"/{CAR}?auth&noredirect")
    assert status == 200 and "bypass" in body
    assert lookup.calls == [(CAR, True)]


async def test_aliases_are_followed_and_loops_refused(lookup: FakeLookup) -> None:
    lookup.records["88.1/OLD"] = (string(1, "HS_ALIAS", "88.1/MIDDLE"),)
    lookup.records["88.1/MIDDLE"] = (string(1, "HS_ALIAS", CAR),)
    lookup.records["88.1/LOOP-A"] = (string(1, "HS_ALIAS", "88.1/LOOP-B"),)
    lookup.records["88.1/LOOP-B"] = (string(1, "HS_ALIAS", "88.1/loop-a"),)
    for i in range(7):
        lookup.records[f"88.1/CHAIN-{i}"] = (string(1, "HS_ALIAS", f"88.1/CHAIN-{i + 1}"),)
    lookup.records["88.1/DANGLING"] = (string(1, "HS_ALIAS", "88.1/GONE"),)
    async with TestClient(TestServer(front_app(lookup))) as client:
        assert (await get(client, "/88.1/OLD"))[1]["Location"] == CAR_URL
        status, _, body = await get(client, "/88.1/OLD?noredirect")
        assert status == 200 and "Reached through alias" in body and "88.1/MIDDLE" in body
        status, _, body = await get(client, "/88.1/LOOP-A")
        assert status == 508 and "The aliases loop: 88.1/LOOP-A → 88.1/LOOP-B → 88.1/loop-a" in body
        status, _, body = await get(client, "/88.1/CHAIN-0")
        assert status == 508 and "More than 5 aliases" in body
        status, _, body = await get(client, "/88.1/DANGLING")
        assert status == 404 and "No identifier 88.1/GONE exists (reached through the alias 88.1/DANGLING)" in body
        status, _, body = await get(client, "/88.1/OLD?ignore_aliases&noredirect")
        assert status == 200 and "HS_ALIAS" in body


async def test_location_lists_choose_by_locatt_and_weight(lookup: FakeLookup) -> None:
    loc = (
        '<locations><location id="0" href="https://eu.example/p" weight="1" country="de"/>'
        '<location id="1" href="https://cn.example/p" weight="0" country="cn"/></locations>'
    )
    lookup.records["88.1/LOC"] = (string(1, "URL", "https://plain/"), string(2, "10320/loc", loc, ttl=60))
    async with TestClient(TestServer(front_app(lookup, rng=random.Random(3)))) as client:
        status, headers, _ = await get(client, "/88.1/LOC")
        assert (status, headers["Location"], headers["Cache-Control"]) == (302, "https://eu.example/p", "max-age=60")
        assert (await get(client, "/88.1/LOC?locatt=country:cn"))[1]["Location"] == "https://cn.example/p"
        assert (await get(client, "/88.1/LOC?locatt=id:0"))[1]["Location"] == "https://eu.example/p"


async def test_unknown_and_malformed_identifiers_get_pages_that_say_why(client: Client) -> None:
    status, headers, body = await get(client, "/88.118.8/NO-SUCH")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "No identifier 88.118.8/NO-SUCH exists" in body
    status, _, body = await get(client, "/not-a-handle")
    assert status == 400 and "no &#34;/&#34; between prefix and suffix" in body
    status, _, body = await get(client, "/99.1/x")
    assert status == 400 and "Not an identifier" in body
    status, _, body = await get(client, f"/{CAR}?index=abc")
    assert status == 400 and "not a non-negative integer" in body


async def test_a_failed_resolution_is_a_502_page_naming_the_servers(client: Client, lookup: FakeLookup) -> None:
    lookup.down = True
    status, _, body = await get(client, f"/{CAR}")
    assert status == 502 and "No server answered" in body and "http://127.0.0.1:9: cannot connect" in body


async def test_non_http_urls_are_shown_not_redirected_to(lookup: FakeLookup) -> None:
    lookup.records["88.1/JS"] = (string(1, "URL", "javascript:alert(document.cookie)"), ADMIN)
    lookup.records["88.1/NONE"] = (string(1, "MODEL", "no url"),)
    async with TestClient(TestServer(front_app(lookup))) as client:
        status, headers, body = await get(client, "/88.1/JS")
        assert status == 200 and "Location" not in headers
        assert "not an http or https address" in body and 'href="javascript' not in body
        status, headers, body = await get(client, "/88.1/NONE")
        assert status == 200 and "Location" not in headers and "no url" in body


async def test_values_are_escaped(lookup: FakeLookup) -> None:
    lookup.records["88.1/XSS"] = (
        string(1, "MODEL", "<script>alert(1)</script>"),
        string(2, '<img src=x onerror="alert(2)">', '"><b>bold</b>'),
    )
    async with TestClient(TestServer(front_app(lookup))) as client:
        status, _, body = await get(client, "/88.1/XSS")
        assert status == 200
        assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "<img src=x" not in body and "<b>" not in body  # the page's own <img> is the QR code's


async def test_the_search_form_goes_to_the_identifier_page(client: Client) -> None:
    status, headers, _ = await get(client, "/?handle=+hdl:88.118.8/VIN%20X+")
    assert (status, headers["Location"]) == (303, "/88.118.8/VIN%20X?noredirect")
    status, _, body = await get(client, "/")
    assert status == 200 and '<form class="search" method="get" action="/"' in body
    assert 'name="viewport"' in body and "http" not in body.split("<style>")[1].split("</style>")[0]  # no CDN
    assert "top mirror (Guangzhou)" in body
