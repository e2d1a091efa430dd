"""Fakes for the driver tests: a scripted transport, bodies shaped as an authoritative node writes them,
the tree 88 -> 88.118 -> 88.118.8 with two roots and an enterprise backup site, and ``make`` to build a
resolver over them with a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from resolver.cache import Cache, CacheConfig
from resolver.driver import RecursiveResolver
from resolver.errors import FailureKind, UpstreamError
from resolver.sites import SiteServer, site_data
from resolver.upstream import UpstreamConfig, Upstreams
from resolver.values import HandleValue, value_to_wire
from tests.fakes import FakeClock

__all__ = [
    "ABSENT",
    "CAR",
    "CARMAKER",
    "CARMAKER_MIRROR",
    "CHENGDU",
    "CHONGQING",
    "ROOTS",
    "SECONDARY",
    "VIN",
    "VIN2",
    "FakeTransport",
    "Reply",
    "answer",
    "make",
    "not_found",
    "referral",
    "script_top",
    "script_tree",
    "settle",
    "sites",
    "until",
    "url_value",
    "wire",
]

HOST = "127.0.0.1"
CHONGQING = SiteServer(f"http://{HOST}:8100", True, "National top-level node, Chongqing")
CHENGDU = SiteServer(f"http://{HOST}:8101", False, "Top-level hosting node, Chengdu")
ROOTS = (CHONGQING, CHENGDU)
SECONDARY = SiteServer(f"http://{HOST}:8200", True, "Automotive secondary node")
CARMAKER = SiteServer(f"http://{HOST}:8300", True, "Carmaker enterprise node")
CARMAKER_MIRROR = SiteServer(f"http://{HOST}:8301", False, "Carmaker backup node")

VIN = "88.118.8/VIN-LFV3A23C5K3000417"
VIN2 = "88.118.8/VIN-LFV3A23C5K3000418"
ABSENT = "88.118.8/NO-SUCH-CAR"

Reply = tuple[int, Mapping[str, Any]]


class FakeTransport:
    """Scripted replies per (url, handle); counts calls; can fail a server, hold it on an Event or slow it down."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], Reply] = {}
        self.calls: list[tuple[str, str]] = []
        self.timeouts: list[float] = []
        self.refusing: set[str] = set()  # every query to these raises UpstreamError
        self.gates: dict[str, asyncio.Event] = {}  # queries to these wait for the event first
        self.delays: dict[str, float] = {}  # real seconds a reply takes (the driver times tries itself)
        self.on_query: Callable[[str], None] | None = None
        self.healthy: set[str] = set()  # probes of these succeed
        self.probes: list[str] = []

    def script(self, url: str, handle: str, reply: Reply) -> None:
        self.replies[(url, handle)] = reply

    def calls_to(self, server: SiteServer) -> int:
        return sum(1 for url, _ in self.calls if url == server.url)

    async def query(self, url: str, handle: str, timeout: float) -> Reply:
        self.calls.append((url, handle))
        self.timeouts.append(timeout)
        if self.on_query is not None:
            self.on_query(url)
        # The node reads the record when the query arrives; a gate or a delay holds back only the reply.
        reply = self.replies.get((url, handle))
        gate = self.gates.get(url)
        if gate is not None:
            await gate.wait()
        if url in self.delays:
            await asyncio.sleep(self.delays[url])
        if url in self.refusing:
            raise UpstreamError.one(url, FailureKind.CANNOT_CONNECT, f"cannot connect to {url} (Connection refused)")
        if reply is None:
            raise AssertionError(f"unscripted query for {handle} to {url}")
        return reply

    async def probe(self, url: str, timeout: float) -> bool:
        self.probes.append(url)
        return url in self.healthy


# -- bodies exactly as nodes.authoritative.app writes them -------------------------------------------------


def sites(*servers: SiteServer, ttl: int = 86_400) -> list[HandleValue]:
    values = []
    for i, server in enumerate(servers, start=1):
        port = int(server.url.rsplit(":", 1)[1])
        data = site_data(HOST, port, primary=server.primary, description=server.description)
        values.append(HandleValue(i, "HS_SITE", "site", data, ttl))
    return values


def referral(handle: str, prefix: str, *servers: SiteServer) -> Reply:
    return 300, {
        "responseCode": 303,
        "handle": handle,
        "prefix": prefix,
        "message": f"prefix {prefix} is delegated: ask one of its sites",
        "values": [value_to_wire(v) for v in sites(*servers)],
    }


def answer(handle: str, values: list[HandleValue]) -> Reply:
    return 200, {"responseCode": 1, "handle": handle, "values": [value_to_wire(v) for v in values]}


def not_found(handle: str) -> Reply:
    return 404, {"responseCode": 100, "handle": handle, "message": "Handle Not Found"}


def url_value(url: str, ttl: int = 3600) -> HandleValue:
    return HandleValue(1, "URL", "string", url, ttl)


CAR = [
    url_value("https://automaker.example.cn/vehicles/LFV3A23C5K3000417", 100),
    HandleValue(2, "MODEL", "string", "CQ-EV7"),
]


def wire(values: tuple[HandleValue, ...] | None) -> list[tuple[int, str, Any]] | None:
    return None if values is None else [(v.index, v.type, v.value) for v in values]


def script_tree(fake: FakeTransport, handle: str, final: Reply) -> None:
    """Roots refer to the secondary, the secondary to the carmaker (primary and backup site), which answer ``final``."""
    for root in ROOTS:
        fake.script(root.url, handle, referral(handle, "88.118", SECONDARY))
    fake.script(SECONDARY.url, handle, referral(handle, "88.118.8", CARMAKER, CARMAKER_MIRROR))
    fake.script(CARMAKER.url, handle, final)
    fake.script(CARMAKER_MIRROR.url, handle, final)


def make(
    cache: CacheConfig | None = None, upstream: UpstreamConfig | None = None
) -> tuple[RecursiveResolver, FakeTransport, FakeClock]:
    clock = FakeClock()
    fake = FakeTransport()
    resolver = RecursiveResolver(
        ROOTS,
        fake,
        cache=Cache(cache or CacheConfig(), clock=clock),
        upstreams=Upstreams(upstream or UpstreamConfig(), clock=clock),
        clock=clock,
    )
    script_tree(fake, VIN, answer(VIN, CAR))
    script_tree(fake, VIN2, answer(VIN2, [url_value("https://automaker.example.cn/vehicles/418")]))
    script_tree(fake, ABSENT, not_found(ABSENT))
    return resolver, fake, clock


async def until(check: Callable[[], bool], what: str, within: float = 2.0) -> None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(0.005)


async def settle(resolver: RecursiveResolver) -> None:
    """Let background refreshes and walks nobody awaits any more run to the end."""
    await until(lambda: not resolver._background and not resolver._inflight, "background work finished")


def script_top(fake: FakeTransport, *handles: str) -> None:
    """Handles directly under 88: the top-level node answers them itself."""
    for handle in handles:
        for root in ROOTS:
            fake.script(root.url, handle, answer(handle, [url_value(f"https://top.example.cn/{handle}")]))
