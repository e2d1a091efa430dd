"""Browsers and link checkers on the API: CORS as HANDLE.NET answers it, HEAD on GET routes, 404s.

HANDLE.NET's REST API allows any origin and does not set ``Access-Control-Allow-Credentials``
(Technical Manual §14; a page elsewhere may read public records, and sends credentials only by
setting ``Authorization`` itself, which the preflight allows). :func:`setup_cors` adds to an
application, once its routes are in place:

- an ``OPTIONS`` route on every ``/api/`` resource (the preflight: 204 with the allowed methods and
  headers, cached by the browser for a day);
- a ``HEAD`` route on every resource that has ``GET`` without it (the same handler: aiohttp sends
  the headers and drops the body);
- one ``on_response_prepare`` signal that puts ``Access-Control-Allow-Origin: *`` on every ``/api/``
  answer, errors included. A signal, not a middleware: it costs a response one call, where a
  middleware layer costs the recursive node's cache hit about 3 µs of 60.

:func:`no_such_route` is the catch-all handler that answers an unknown path 404 in a Handle body
(HANDLE.NET says 405 "Unknown HTTP API endpoint"; a 404 is what browsers and link checkers expect),
and 405 with ``Allow`` only where the path exists for other methods.
"""

from __future__ import annotations

from aiohttp import web, web_urldispatcher

from nodes.shared.http_api import respond

__all__ = ["CORS_HEADERS", "PREFLIGHT_HEADERS", "add_cors_header", "no_such_route", "preflight", "setup_cors"]

API = "/api/"
_ALLOW_ORIGIN = "Access-Control-Allow-Origin"
CORS_HEADERS = {_ALLOW_ORIGIN: "*"}
"""On every ``/api/`` answer; a handler may include them in its precomputed headers to skip the signal's work."""
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, DELETE, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept",
    # A day: browsers cap it lower anyway (Chromium 2 h, Firefox 24 h).
    "Access-Control-Max-Age": "86400",
}


async def preflight(request: web.Request) -> web.Response:
    """A CORS preflight (``OPTIONS``): which methods and headers a page elsewhere may use."""
    del request
    return web.Response(status=204, headers=PREFLIGHT_HEADERS)


async def add_cors_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The ``on_response_prepare`` signal: ``Access-Control-Allow-Origin`` on every ``/api/`` answer.
    It reads ``raw_path`` (no decoding, unlike ``path``): this runs for every response of the node."""
    if request.raw_path.startswith(API):
        headers = response.headers
        if _ALLOW_ORIGIN not in headers:
            headers[_ALLOW_ORIGIN] = "*"


def _resource_path(resource: web.AbstractResource) -> str:
    info = resource.get_info()
    return str(info.get("path") or info.get("formatter") or info.get("prefix") or "")


def setup_cors(app: web.Application) -> None:
    """Preflight routes on the ``/api/`` resources, HEAD beside every GET, and the CORS header
    signal. Call it after the routes are added (a resource added later gets neither)."""
    for resource in app.router.resources():
        if not isinstance(resource, web_urldispatcher.Resource):
            continue  # static files and sub-applications route themselves
        methods = {route.method for route in resource}
        if "*" in methods:
            continue  # a catch-all already answers every method
        if _resource_path(resource).startswith(API) and "OPTIONS" not in methods:
            resource.add_route("OPTIONS", preflight)
        if "GET" in methods and "HEAD" not in methods:
            get = next(route for route in resource if route.method == "GET")
            resource.add_route("HEAD", get.handler)
    app.on_response_prepare.append(add_cors_header)


async def no_such_route(request: web.Request) -> web.StreamResponse:
    """What the router found nothing for: 405 with ``Allow`` when the path exists for other methods
    (an OPTIONS there is a preflight), else 404 ``Unknown HTTP API endpoint`` in a Handle body."""
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        if request.method == "OPTIONS" and request.path.startswith(API):
            return await preflight(request)
        allow = ", ".join(sorted(allowed))
        message = f"method {request.method} is not allowed on {request.path} (allowed: {allow})"
        return respond(request, 405, {"responseCode": 4, "message": message}, {"Allow": allow})
    return respond(request, 404, {"responseCode": 4, "message": f"Unknown HTTP API endpoint {request.path}"})
