"""The baseline server: bare aiohttp on uvloop answering the same records from a dict, nothing else.

It is what the recursive node's hot path is compared against: the same route
(``/api/handles/{handle:.+}``), the same response bytes and the same ``Content-Type``, on the same
loop with ``access_log=None``, in one process, but with no middleware, no metrics, no identifier
parsing and no cache bookkeeping. Two variants:

- ``preencoded``: the body bytes are built once at start and the handler returns them
  (``web.Response(body=BYTES)``). The recursive node also serves pre-encoded bytes on a hit, so this
  is the fair comparison, and the stricter one (it is the faster baseline);
- ``encode``: the handler encodes the record per request exactly as the nodes do,
  ``json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")``
  (``resolver.codec.encode``): what a straightforward aiohttp service would do.

Run: ``python -m benchmarks.baseline --port PORT --records FILE --mode preencoded``, where FILE is a
msgpack map of handle -> JSON payload (what the benchmark saved from the recursive node's answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
from aiohttp import web

__all__ = ["MODES", "create_baseline_app", "load_records", "main"]

MODES = ("preencoded", "encode")
_CONTENT_TYPE = {"Content-Type": "application/json; charset=utf-8"}


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def load_records(path: Path) -> dict[str, Any]:
    records = msgpack.unpackb(path.read_bytes(), raw=False)
    if not isinstance(records, dict):
        raise ValueError(f"{path} does not hold a map of handle -> payload")
    return records


def create_baseline_app(records: dict[str, Any], mode: str) -> web.Application:
    app = web.Application()
    not_found = {"responseCode": 100, "message": "Handle Not Found"}
    if mode == "preencoded":
        bodies = {handle: _encode(payload) for handle, payload in records.items()}

        async def preencoded(request: web.Request) -> web.Response:
            body = bodies.get(request.match_info["handle"])
            if body is None:
                return web.Response(body=_encode(not_found), status=404, headers=_CONTENT_TYPE)
            return web.Response(body=body, headers=_CONTENT_TYPE)

        app.router.add_get("/api/handles/{handle:.+}", preencoded)
    elif mode == "encode":

        async def encode(request: web.Request) -> web.Response:
            payload = records.get(request.match_info["handle"])
            if payload is None:
                return web.Response(body=_encode(not_found), status=404, headers=_CONTENT_TYPE)
            return web.Response(body=_encode(payload), headers=_CONTENT_TYPE)

        app.router.add_get("/api/handles/{handle:.+}", encode)
    else:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', headers=_CONTENT_TYPE)

    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--mode", choices=MODES, default="preencoded")
    args = parser.parse_args(argv)
    app = create_baseline_app(load_records(args.records), args.mode)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # The same server settings as nodes/serve.py: no access log, uvloop.
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
