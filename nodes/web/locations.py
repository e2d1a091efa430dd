"""10320/LOC location lists (Technical Manual §12): parsing the XML and choosing one location, pure.

A ``10320/LOC`` value lists where an identifier's object can be found::

    <locations chooseby="locatt,weighted">
      <location id="0" href="https://eu.example/obj" weight="1" country="de" />
      <location id="1" href="https://cn.example/obj" weight="2" country="cn" />
    </locations>

The Handle proxy chooses by ``chooseby`` (default ``locatt,country,weighted``): ``?locatt=key:value``
keeps the locations whose attribute ``key`` equals ``value`` (case-insensitive; ``id:1``,
``country:cn``); then one is drawn at random by ``weight`` (default 1; ``weight="0"`` is never drawn,
though ``locatt`` can still name it). This node knows no client's country, so ``country`` chooses only
through ``?locatt=country:xx``. The value is untrusted: a DOCTYPE (entity expansion) or malformed XML
makes it a list of no locations, and only http(s) ``href``s count.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nodes.web.urls import is_web_url

__all__ = ["LOC_TYPE", "Location", "choose_location", "parse_locations"]

LOC_TYPE = "10320/LOC"
_MAX_LOCATIONS = 256  # a value is at most max_value_bytes; this bounds the work of one choice anyway


@dataclass(frozen=True, slots=True)
class Location:
    href: str
    weight: float = 1.0
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Every attribute as written (``id``, ``country``, ``weight``...), names in lower case."""


def parse_locations(text: str) -> tuple[Location, ...]:
    """The locations of a 10320/LOC value; none when it is not a location list this node reads."""
    if "<!" in text:  # DOCTYPE or ENTITY: never expanded (the value comes from any record's owner)
        return ()
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return ()
    if root.tag.lower() != "locations":
        return ()
    found: list[Location] = []
    for element in root:
        if element.tag.lower() != "location" or len(found) >= _MAX_LOCATIONS:
            continue
        attributes = {k.lower(): v for k, v in element.attrib.items()}
        href = attributes.get("href", "").strip()
        if not href:
            continue
        found.append(Location(href, _weight(attributes.get("weight")), attributes))
    return tuple(found)


def _weight(raw: str | None) -> float:
    if raw is None:
        return 1.0
    try:
        weight = float(raw)
    except ValueError:
        return 1.0
    return weight if weight >= 0 and weight == weight and weight != float("inf") else 1.0


def choose_location(
    locations: Sequence[Location], locatt: str | None, rng: random.Random | None = None
) -> Location | None:
    """The location a request goes to: the ``locatt`` matches if any, else a weighted draw (None
    when nothing usable is listed). ``rng`` makes the draw repeatable in tests."""
    usable = [loc for loc in locations if is_web_url(loc.href)]
    if not usable:
        return None
    if locatt:
        key, _, wanted = locatt.partition(":")
        key, wanted = key.strip().lower(), wanted.strip().lower()
        matching = [loc for loc in usable if loc.attributes.get(key, "").strip().lower() == wanted]
        if matching:
            usable = matching
            if all(loc.weight == 0 for loc in usable):
                return usable[0]  # named explicitly: a zero weight hides it only from the draw
    weighted = [loc for loc in usable if loc.weight > 0]
    if not weighted:
        return usable[0]
    draw = (rng or random).random() * sum(loc.weight for loc in weighted)
    for loc in weighted:
        draw -= loc.weight
        if draw < 0:
            return loc
    return weighted[-1]
