"""Which value a proxy request redirects to, as the Handle proxy chooses it: pure, no I/O.

The rules come from HANDLE.NET's proxy (``HDLProxy``, Technical Manual §5.4.1 and §12):

1. ``?type=`` / ``?index=`` narrow the candidates first (OR-ed, a type ending in "." takes its subtypes,
   as the REST API filters); the first string value left whose data is a URL is the target.
2. Otherwise a ``10320/LOC`` value, when the record has one and it lists a usable location, chooses
   the target (``nodes.web.locations``).
3. Otherwise the first value of type ``URL`` (any case) or ``0.TYPE/URL``, else the first ``URL.*``.

Only ``http`` and ``https`` targets are redirected to: a ``javascript:`` or ``file:`` URL in a record
is shown on the values page, never sent as a ``Location``. ``?urlappend=`` is appended as it is,
as the Handle proxy does. Cache headers come from the chosen value's TTL, capped at two days
(``HandleValue.MAX_RECOGNIZED_TTL``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

from nodes.web.locations import LOC_TYPE, choose_location, parse_locations
from nodes.web.urls import is_web_url
from resolver.records import filter_values
from resolver.values import HandleValue

__all__ = ["MAX_RECOGNIZED_TTL", "Target", "cache_headers", "choose_target", "url_value"]

MAX_RECOGNIZED_TTL = 172_800  # seconds: HANDLE.NET ignores longer TTLs (HandleValue.MAX_RECOGNIZED_TTL)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the URL (``urlappend`` included) and the value it came from."""

    url: str
    value: HandleValue
    redirect: bool
    """False when the URL is not http(s): the values page is shown instead."""


def _is_url_type(vtype: str) -> bool:
    upper = vtype.upper()
    return upper in ("URL", "0.TYPE/URL")


def url_value(values: Sequence[HandleValue]) -> HandleValue | None:
    """The record's URL value: the first of type URL (or 0.TYPE/URL), else the first URL.* subtype."""
    strings = [v for v in values if v.format == "string"]
    for value in strings:
        if _is_url_type(value.type):
            return value
    for value in strings:
        if value.type.upper().startswith("URL."):
            return value
    return None


def choose_target(
    values: Sequence[HandleValue],
    *,
    types: Sequence[str] = (),
    indexes: Sequence[int] = (),
    urlappend: str = "",
    locatt: str | None = None,
    rng: random.Random | None = None,
) -> Target | None:
    """The value a redirect goes to, or None when the record has none (the values page then)."""
    chosen: HandleValue | None
    url: str | None = None
    if types or indexes:
        picked = [v for v in filter_values(values, types, indexes) if v.format == "string"]
        chosen = next((v for v in picked if is_web_url(v.value)), picked[0] if picked else None)
    else:
        chosen, url = _from_locations(values, locatt, rng)
        if chosen is None:
            chosen = url_value(values)
    if chosen is None:
        return None
    target = (url if url is not None else str(chosen.value).strip()) + urlappend
    return Target(target, chosen, is_web_url(target))


def _from_locations(
    values: Sequence[HandleValue], locatt: str | None, rng: random.Random | None
) -> tuple[HandleValue | None, str | None]:
    for value in values:
        if value.type.upper() == LOC_TYPE and value.format == "string":
            location = choose_location(parse_locations(value.value), locatt, rng)
            if location is not None:
                return value, location.href
    return None, None


def cache_headers(value: HandleValue, now: float) -> dict[str, str]:
    """``Cache-Control`` and ``Expires`` from the value's TTL (capped as HANDLE.NET caps it)."""
    ttl = max(0, min(value.ttl, MAX_RECOGNIZED_TTL))
    return {"Cache-Control": f"max-age={ttl}", "Expires": formatdate(now + ttl, usegmt=True)}
