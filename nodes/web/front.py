"""The front door's handlers: ``/`` (the search page) and ``/{identifier}`` (the Handle proxy's answers).

``GET /{identifier}`` answers as HANDLE.NET's proxy does (Technical Manual §5.4.1; ``nodes.web.choose``
says which value): a 302 to the identifier's URL with cache headers from its TTL; ``?noredirect``, or
no URL to go to, gives the page of its values. Parameters: ``type``/``index`` (the value to redirect
to), ``urlappend``, ``locatt`` (10320/LOC), ``auth`` (resolve at the owning primary),
``ignore_aliases``, and ``qr=png|svg`` (the QR code of the identifier's resolver URL). HS_ALIAS values
are followed here, up to ``MAX_ALIASES``, each through the same lookup (so through the cache); a
loop is refused. Every failure is an HTML page with its HTTP status and the reason in words.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from nodes.shared.http_api import Handler, handle_from_path, query_bool, query_ints
from nodes.web.choose import Target, cache_headers, choose_target
from nodes.web.lookup import Looked, Lookup, Step, TopologyView
from nodes.web.pages import Pages
from nodes.web.qr import QR_KINDS, qr_image
from nodes.web.urls import identifier_path, strip_scheme
from resolver.errors import HandleError, InvalidHandle, NotResponsible, UpstreamError
from resolver.names import Handle, parse_handle
from resolver.values import HandleValue

__all__ = ["DEMO_EXAMPLE", "MAX_ALIASES", "FrontDoor", "add_front_door"]

# The Handle proxy follows up to 20 aliases; each one here is a resolution made for one request, and a
# chain of more than a few is a mistake in the records, so this node stops sooner.
MAX_ALIASES = 5
ALIAS_TYPE = "HS_ALIAS"
DEMO_EXAMPLE = "88.118.8/VIN-LFV3A23C5K3000417"  # the demo car of ``idres up`` (nodes.running.seeding)
# Characters a Location header keeps as they are; anything else (spaces, non-ASCII) is percent-encoded.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"
_QR_CACHE = "max-age=86400"  # a QR code depends only on the identifier and this node's address


class _PageError(Exception):
    """A request this module answers with an error page (raised inside, rendered once)."""

    def __init__(self, status: int, title: str, reason: str, handle: str = "") -> None:
        super().__init__(reason)
        self.status, self.title, self.reason, self.handle = status, title, reason, handle


class FrontDoor:
    """The handlers over a lookup and a topology view. ``public_url`` is the address printed in QR
    codes (default: the one the request came to); ``rng`` draws among weighted 10320/LOC locations."""

    def __init__(
        self,
        lookup: Lookup,
        topology: TopologyView,
        *,
        public_url: str | None = None,
        example: str = DEMO_EXAMPLE,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self._topology = topology
        self._public_url = public_url.rstrip("/") if public_url else None
        self._example = example
        self._rng = rng or random.Random()
        self._clock = clock
        self.pages = Pages()

    def _origin(self, request: web.Request) -> str:
        return self._public_url or f"{request.scheme}://{request.host}"

    async def home(self, request: web.Request) -> web.StreamResponse:
        """The search page; ``/?handle=X`` (the search form) goes to X's page."""
        wanted = strip_scheme(request.query.get("handle", "").strip())
        if wanted:
            raise web.HTTPSeeOther(identifier_path(wanted) + "?noredirect")
        return self.pages.response(
            "home.html",
            example=self._example,
            example_href=identifier_path(self._example) + "?noredirect",
            origin=self._origin(request),
            servers=self._topology(),
        )

    async def identifier(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._identifier(request)
        except _PageError as exc:
            return self.pages.error(exc.status, exc.title, exc.reason, handle=exc.handle)
        except UpstreamError as exc:
            return self.pages.error(
                exc.http_status, "No server answered", exc.message, handle=exc.handle or "", servers=self._topology()
            )
        except NotResponsible as exc:
            return self.pages.error(exc.http_status, "Not served here", exc.message, handle=exc.handle or "")
        except HandleError as exc:
            title = "Invalid request" if exc.http_status == 400 else "Cannot resolve"
            return self.pages.error(exc.http_status, title, exc.message, handle=exc.handle or "")

    async def _identifier(self, request: web.Request) -> web.StreamResponse:
        text = strip_scheme(handle_from_path(request, "/"))
        try:
            handle = parse_handle(text)
        except InvalidHandle as exc:
            raise _PageError(400, "Not an identifier", exc.message, text) from exc
        resolver_url = self._origin(request) + identifier_path(handle.text)
        kind = request.query.get("qr")
        if kind is not None:
            return self._qr(handle, resolver_url, kind)
        auth = query_bool(request, "auth")
        types, indexes = request.query.getall("type", []), query_ints(request, "index")
        looked, aliases, trace = await self._follow(handle, auth, request, query_bool(request, "ignore_aliases"))
        if looked.values is None:
            via = f" (reached through the alias {aliases[-1]})" if aliases else ""
            raise _PageError(404, "Not found", f"No identifier {looked.handle.text} exists{via}.", handle.text)
        note = ""
        if not query_bool(request, "noredirect"):
            target = choose_target(
                looked.values,
                types=types,
                indexes=indexes,
                urlappend=request.query.get("urlappend", ""),
                locatt=request.query.get("locatt"),
                rng=self._rng,
            )
            if target is not None and target.redirect:
                return self._redirect(target)
            note = _why_not_redirected(target, bool(types or indexes))
        return self.pages.record(
            looked,
            resolver_url=resolver_url,
            aliases=aliases,
            note=note,
            servers=self._topology(),
            trace=trace,
        )

    async def _follow(
        self, handle: Handle, auth: bool, request: web.Request, ignore_aliases: bool
    ) -> tuple[Looked, list[str], list[Step]]:
        """Resolve ``handle`` and the HS_ALIAS chain it starts (the identifiers passed, every step)."""
        looked = await self._lookup(handle, auth, request)
        trace = list(looked.trace)
        aliases: list[str] = []
        seen = {handle.key}
        while not ignore_aliases and looked.values:
            alias = _alias_of(looked.values)
            if alias is None:
                break
            aliases.append(looked.handle.text)
            if len(aliases) > MAX_ALIASES:
                raise _PageError(
                    508,
                    "Too many aliases",
                    f"More than {MAX_ALIASES} aliases in a row: {' → '.join(aliases)}.",
                    handle.text,
                )
            try:
                target = parse_handle(str(alias.value).strip())
            except InvalidHandle as exc:
                raise _PageError(
                    502,
                    "Broken alias",
                    f"{looked.handle.text} is an alias of an invalid identifier: {exc.message}",
                    handle.text,
                ) from exc
            if target.key in seen:
                chain = " → ".join([*aliases, target.text])
                raise _PageError(508, "Alias loop", f"The aliases loop: {chain}.", handle.text)
            seen.add(target.key)
            looked = await self._lookup(target, auth, request)
            trace.extend(looked.trace)
        return looked, aliases, trace

    def _redirect(self, target: Target) -> web.Response:
        location = quote(target.url.strip(), safe=_URL_SAFE)
        headers = {"Location": location, **cache_headers(target.value, self._clock())}
        body = self.pages.render("redirect.html", location=location)
        return self.pages.response_text(body, 302, headers)

    def _qr(self, handle: Handle, resolver_url: str, kind: str) -> web.Response:
        if kind not in QR_KINDS:
            raise _PageError(400, "Unknown QR format", f"qr={kind!r}: ask for qr=png or qr=svg.", handle.text)
        filename = handle.text.replace("/", "_")
        return web.Response(
            body=qr_image(resolver_url, kind),
            headers={
                "Content-Type": QR_KINDS[kind],
                "Cache-Control": _QR_CACHE,
                "Content-Disposition": f"inline; filename*=UTF-8''{quote(filename, safe='')}.{kind}",
                "X-Content-Type-Options": "nosniff",
            },
        )


def _alias_of(values: tuple[HandleValue, ...]) -> HandleValue | None:
    return next((v for v in values if v.type.upper() == ALIAS_TYPE and isinstance(v.value, str)), None)


def _why_not_redirected(target: Target | None, filtered: bool) -> str:
    if target is None:
        return "No value matches the type or index asked for." if filtered else ""
    return (
        f"The value at index {target.value.index} ({target.value.type}) is not an http or https address, "
        "so this resolver does not redirect to it."
    )


def add_front_door(
    app: web.Application,
    lookup: Lookup,
    topology: TopologyView,
    *,
    public_url: str | None = None,
    rng: random.Random | None = None,
    wrap: Callable[[Handler], Handler] | None = None,
) -> FrontDoor:
    """Add ``/`` and ``/{identifier}`` (GET and HEAD) to ``app``. Call it after every other route but
    before a catch-all: ``/api/...`` is never an identifier here (unknown API paths stay JSON 404s).
    ``wrap``: what the node does around each handler (the recursive node's ``guarded``, which counts
    requests in its metrics)."""
    door = FrontDoor(lookup, topology, public_url=public_url, rng=rng)
    around = wrap or (lambda handler: handler)
    app.router.add_get("/", around(door.home))
    app.router.add_get(r"/{handle:(?!api(?:/|$))[\s\S]+}", around(door.identifier))
    return door
