"""A real headless Chromium through the front door (Debian's ``chromium``, driven by Playwright).

Against a real recursive node's own application (top -> automotive -> carmaker on 127.0.0.1
with ``idres up``'s demo data, the battery maker's pack added on a node of its own): search the demo
car from ``/``, see its values and the walk, follow its COMPONENT to the battery pack, decode the QR
code the page offers, and check a ``<script>`` value is shown as text and never runs.
Screenshots go to the test's directory, and to ``$IDRES_SCREENSHOTS`` (e.g. ``docs``) when set.
Skipped where Chromium, Playwright or zbarimg is missing, unless ``IDRES_REQUIRE_BROWSER`` is set
(``.ci/run`` installs them and sets it, so a missing browser fails there instead of passing unseen).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodes.running.seeding import DEMO_CAR, DEMO_PACK
from resolver.client import HandleClient, basic_auth
from tests.conftest import LocalNode
from tests.nodes.web.conftest import SECRETS
from tests.nodes.web.qr_decode import decode

REQUIRED = bool(os.environ.get("IDRES_REQUIRE_BROWSER"))
if REQUIRED:
    import playwright.async_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS = "88.118.8/XSS-1"


@pytest.fixture
async def site(nodes: dict[str, LocalNode]) -> AsyncIterator[str]:
    """The recursive node (its front door as it serves it), with a hostile record added."""
    if not os.path.exists(CHROMIUM) or shutil.which("zbarimg") is None:
        missing = "Debian's chromium and zbar-tools are needed"
        if REQUIRED:
            pytest.fail(missing)
        pytest.skip(missing)
    carmaker = nodes["carmaker"]
    reply = await HandleClient(carmaker.session).put(
        carmaker.url,
        XSS,
        [{"index": 1, "type": "MODEL", "data": "<script>window.pwned = 1</script>"}],
        authorization=basic_auth("300:0.NA/88.118.8", SECRETS["carmaker"]),
    )
    assert reply.status in (200, 201)
    yield nodes["recursive"].url  # the recursive node's own application: its front door is wired in


async def test_a_person_searches_the_car_follows_its_battery_pack_and_scans_the_code(site: str, tmp_path: Path) -> None:
    shots = [tmp_path, *([Path(os.environ["IDRES_SCREENSHOTS"])] if os.environ.get("IDRES_SCREENSHOTS") else [])]
    dialogs: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            await page.goto(site + "/")
            await page.fill("input[name=handle]", DEMO_CAR)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"**/{DEMO_CAR}?noredirect")
            body = await page.inner_text("body")
            assert "CQ-EV7 electric SUV" in body and "https://automaker.example.cn/vehicles/" in body
            assert "Top-level node" in body and "Carmaker" in body and "referral" in body  # the walk
            for folder in shots:
                await page.screenshot(path=str(folder / "front-door.png"), full_page=True)

            qr_href = await page.get_attribute("a[href$='?qr=png']", "href")
            assert qr_href is not None
            png = await page.request.get(site + qr_href)
            (tmp_path / "qr.png").write_bytes(await png.body())
            assert decode(tmp_path / "qr.png") == f"{site}/{DEMO_CAR}"  # where this node was reached

            await page.click(f"a.handle[href='/{DEMO_PACK}?noredirect']")
            await page.wait_for_url(f"**/{DEMO_PACK}?noredirect")
            assert "LFP traction pack 78 kWh" in await page.inner_text("main")

            await page.goto(f"{site}/{XSS}?noredirect")
            assert "<script>window.pwned = 1</script>" in await page.inner_text("main")
            assert await page.evaluate("window.pwned") is None and dialogs == []

            phone = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            await phone.goto(f"{site}/{DEMO_CAR}?noredirect")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390  # no sideways scrolling on a phone
            for folder in shots:
                await phone.screenshot(path=str(folder / "front-door-phone.png"), full_page=True)
        finally:
            await browser.close()
