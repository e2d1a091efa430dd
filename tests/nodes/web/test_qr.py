"""QR codes of an identifier's resolver URL: PNG and SVG downloads that decode to it, the page's inline SVG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.nodes.web.fakes import CAR
from tests.nodes.web.qr_decode import decode, svg_to_pbm

Client = TestClient[Any, Any]


async def test_the_png_decodes_to_the_identifiers_resolver_url(client: Client, tmp_path: Path) -> None:
    async with client.get(f"/{CAR}?qr=png") as response:
        assert response.status == 200 and response.content_type == "image/png"
        assert "max-age" in response.headers["Cache-Control"]
        (tmp_path / "qr.png").write_bytes(await response.read())
    assert decode(tmp_path / "qr.png") == f"http://{client.host}:{client.port}/{CAR}"


async def test_the_svg_decodes_too(client: Client, tmp_path: Path) -> None:
    async with client.get(f"/hdl:{CAR}?qr=svg") as response:
        assert response.status == 200 and response.content_type == "image/svg+xml"
        svg = await response.read()
    assert decode(svg_to_pbm(svg, tmp_path / "qr.pbm")) == f"http://{client.host}:{client.port}/{CAR}"


async def test_an_identifier_needing_escapes_is_encoded_in_the_code(client: Client, tmp_path: Path) -> None:
    async with client.get("/88.1/A%20B%3FC?qr=png") as response:
        (tmp_path / "qr.png").write_bytes(await response.read())
    assert decode(tmp_path / "qr.png").endswith("/88.1/A%20B%3FC")


async def test_the_page_shows_the_code_as_an_image_and_unknown_formats_are_refused(
    client: Client, tmp_path: Path
) -> None:
    async with client.get(f"/{CAR}?noredirect") as response:
        page = await response.text()
    assert f'<img src="/{CAR}?qr=svg"' in page, "the browser fetches the code: the page does not make it"
    async with client.get(f"/{CAR}?qr=svg") as response:
        svg = await response.read()
    assert decode(svg_to_pbm(svg, tmp_path / "shown.pbm")).endswith(f"/{CAR}")
    async with client.get(f"/{CAR}?qr=gif") as response:
        assert response.status == 400 and "ask for qr=png or qr=svg" in await response.text()
