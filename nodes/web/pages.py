"""The front door's HTML: a Jinja2 environment (autoescaped) and what each template is given.

Values are untrusted (any record owner writes them): every template variable is escaped by Jinja2's
autoescape, only http(s) URLs become links (never a ``javascript:`` one), an identifier-valued value
links to that identifier's page, and the pages are served with a Content-Security-Policy that allows
no script at all. The pages work without JavaScript and load nothing from elsewhere (the nodes may
run offline): the CSS is inlined in ``templates/base.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from aiohttp import web

from nodes.web.lookup import Looked, ServerState, Step
from nodes.web.urls import identifier_path, is_web_url
from resolver.errors import InvalidHandle
from resolver.names import parse_handle
from resolver.values import HandleValue

__all__ = ["HTML_HEADERS", "Pages", "ValueView", "readable_ttl", "value_view"]

# No script may run on a page, whatever a value holds; styles are inline; images are the inline QR.
HTML_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TTL_UNITS = ((86_400, "d"), (3_600, "h"), (60, "min"), (1, "s"))


def readable_ttl(seconds: int) -> str:
    """``86400`` -> ``"1 d"``, ``5400`` -> ``"1 h 30 min"``: the two largest units."""
    if seconds <= 0:
        return "0 s (not cached)"
    parts = []
    left = seconds
    for size, unit in _TTL_UNITS:
        if left >= size:
            parts.append(f"{left // size} {unit}")
            left %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ValueView:
    """One value as the record page shows it."""

    index: int
    type: str
    kind: str
    """"url" (a link), "handle" (a link to that identifier's page), "text" or "data" (structured)."""
    text: str
    href: str
    ttl: str
    timestamp: str
    hidden: bool
    """An HS_* value: shown in the collapsed section."""


def _handle_href(text: str) -> str | None:
    try:
        return identifier_path(parse_handle(text.strip()).text) + "?noredirect"
    except InvalidHandle:
        return None


def value_view(value: HandleValue) -> ValueView:
    data = value.value
    kind, text, href = "text", "", ""
    if isinstance(data, str):
        text = data
        if is_web_url(data):
            kind, href = "url", data.strip()
        elif "/" in data and (link := _handle_href(data)) is not None:
            kind, href = "handle", link
    elif value.format == "admin" and isinstance(data, dict):
        admin = str(data.get("handle", ""))
        text = f"{data.get('index')}:{admin} (permissions {data.get('permissions')})"
        kind, href = "handle", _handle_href(admin) or ""
    else:
        kind, text = "data", json.dumps(data, ensure_ascii=False, indent=1)
    return ValueView(
        value.index,
        value.type,
        kind if href or kind == "data" else "text",
        text,
        href,
        readable_ttl(value.ttl),
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value.timestamp)) if value.timestamp else "",
        value.type.upper().startswith("HS_"),
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("nodes.web", "templates"),
        autoescape=True,  # every template is HTML: escape everything unless marked safe
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # templates are package data: no stat() of each file on every page
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Pages:
    """Renders the front door's pages; one per application (templates are compiled once)."""

    def __init__(self) -> None:
        self._env = _environment()

    def render(self, name: str, **context: Any) -> str:
        return self._env.get_template(name).render(**context)

    def response(
        self, name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> web.Response:
        return self.response_text(self.render(name, **context), status, headers)

    def response_text(self, html: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(text=html, status=status, headers={**HTML_HEADERS, **(headers or {})})

    def error(
        self, status: int, title: str, reason: str, *, handle: str = "", servers: Sequence[ServerState] = ()
    ) -> web.Response:
        """The HTML page of a request that cannot be answered: 400, 404, 502... and why."""
        return self.response(
            "error.html", status, title=title, reason=reason, handle=handle, code=status, servers=servers
        )

    def record(
        self,
        looked: Looked,
        *,
        resolver_url: str,
        aliases: Sequence[str],
        note: str,
        servers: Sequence[ServerState],
        trace: Sequence[Step],
    ) -> web.Response:
        values = [value_view(v) for v in looked.values or ()]
        path = identifier_path(looked.handle.text)
        return self.response(
            "record.html",
            handle=looked.handle.text,
            shown=[v for v in values if not v.hidden],
            hidden=[v for v in values if v.hidden],
            trace=trace,
            total_ms=round(sum(s.ms for s in trace), 3),
            resolver_url=resolver_url,
            qr_png=path + "?qr=png",
            qr_svg_href=path + "?qr=svg",
            aliases=[(a, identifier_path(a) + "?noredirect") for a in aliases],
            note=note,
            servers=servers,
            api_href="/api/handles" + path,
        )
