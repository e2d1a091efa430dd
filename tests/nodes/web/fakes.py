"""A fake lookup and topology for the front door's tests: records in a dict, a trace per answer."""

from __future__ import annotations

import random
from collections.abc import Sequence

from aiohttp import web

from nodes.web import add_front_door, no_such_route, setup_cors
from nodes.web.lookup import Looked, ServerState, Step
from resolver.errors import Attempt, FailureKind, UpstreamError
from resolver.names import Handle
from resolver.values import HandleValue

CAR = "88.118.8/VIN-LFV3A23C5K3000417"
PACK = "88.119.6/PACK-YB-2026-000123"
CAR_URL = "https://automaker.example.cn/vehicles/LFV3A23C5K3000417"
PACK_URL = "https://batterymaker.example.cn/packs/YB-2026-000123"


def string(index: int, vtype: str, data: str, ttl: int = 86_400) -> HandleValue:
    return HandleValue(index, vtype, "string", data, ttl, 1_795_000_000)


ADMIN = HandleValue(100, "HS_ADMIN", "admin", {"handle": "0.NA/88.118.8", "index": 200, "permissions": "011111110011"})

RECORDS: dict[str, tuple[HandleValue, ...]] = {
    CAR: (
        string(1, "URL", CAR_URL, ttl=3_600),
        string(2, "MODEL", "CQ-EV7 electric SUV"),
        string(6, "COMPONENT", PACK),
        ADMIN,
    ),
    PACK: (string(1, "URL", PACK_URL), string(2, "MODEL", "LFP traction pack 78 kWh"), ADMIN),
}


class FakeLookup:
    """Answers from ``records`` (by normalised key); ``down`` makes every lookup fail as upstreams do."""

    def __init__(self, records: dict[str, tuple[HandleValue, ...]] | None = None) -> None:
        self.records = {**RECORDS, **(records or {})}
        self.calls: list[tuple[str, bool]] = []
        self.down = False

    async def __call__(self, handle: Handle, auth: bool, request: web.Request) -> Looked:
        del request
        self.calls.append((handle.text, auth))
        if self.down:
            raise UpstreamError(
                "every server failed",
                handle=handle.text,
                attempts=[Attempt("http://127.0.0.1:9", FailureKind.CANNOT_CONNECT, "cannot connect")],
            )
        values = next((v for k, v in self.records.items() if k.upper() == handle.key.upper()), None)
        cache = "bypass" if auth else "miss"
        trace = (
            Step("top (Beijing)", "http://127.0.0.1:8100", 1.25, cache, "referral", "88.118"),
            Step("automotive", "http://127.0.0.1:8200", 2.5, cache, "answer" if values else "not found"),
        )
        return Looked(handle, values, trace)


SERVERS = (
    ServerState("top (Beijing)", "http://127.0.0.1:8100", "top", False, 1.5),
    ServerState("top mirror (Guangzhou)", "http://127.0.0.1:8101", "top mirror", True, None, "timed out"),
)


def topology() -> Sequence[ServerState]:
    return SERVERS


def front_app(
    lookup: FakeLookup, *, rng: random.Random | None = None, public_url: str | None = None
) -> web.Application:
    """An application wired as the recursive node is: the API routes, the front door, the catch-all,
    then CORS and HEAD over all of them (the order the lead's wiring follows)."""

    async def api_get(request: web.Request) -> web.Response:
        return web.json_response({"responseCode": 1, "handle": request.match_info["handle"], "values": []})

    app = web.Application()
    app.router.add_route("GET", r"/api/handles/{handle:[\s\S]+}", api_get)
    app.router.add_route("PUT", r"/api/handles/{handle:[\s\S]+}", api_get)
    add_front_door(app, lookup, topology, rng=rng or random.Random(7), public_url=public_url)
    app.router.add_route("*", r"/{tail:[\s\S]*}", no_such_route)
    setup_cors(app)
    return app
