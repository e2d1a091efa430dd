"""Sessions between nodes keep no cookies: a server named by a referral is untrusted (DESIGN §11)."""

from __future__ import annotations

from aiohttp import web

from resolver.tls import node_session
from tests.conftest import free_port


async def test_a_cookie_an_upstream_sets_is_neither_kept_nor_sent_back() -> None:
    sent_back: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        sent_back.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        for i in range(50):  # a hostile server may set as many as it likes
            response.set_cookie(f"c{i}", "x" * 100)
        return response

    app = web.Application()
    app.router.add_get("/healthz", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with node_session(None) as session:
            for _ in range(2):
                # By host name: aiohttp's default jar ignores cookies only from IP addresses.
                async with session.get(f"http://localhost:{port}/healthz") as resp:
                    assert resp.status == 200
            assert len(session.cookie_jar) == 0
    finally:
        await runner.cleanup()
    assert sent_back == [None, None]
