"""What an authoritative node is responsible for: its own prefix, hosted prefixes, and delegations.

A node owns one prefix (``88.118``). Below it, each derived prefix is registered by its prefix handle
(``0.NA/88.118.8``) in the node's own records: a prefix handle that carries HS_SITE values is
*delegated* to the node those sites name; one without is *hosted* here (the secondary keeps the
enterprise's identifiers itself). Everything else is none of this node's business.

``route`` turns a handle into one of three decisions, in the order a request needs them:

- ``Serve``: the record (or its absence) is this node's to answer;
- ``Refer``: a covering prefix is delegated: answer with a referral carrying its HS_SITE values;
- ``NotHere``: the node has nothing to do with it (responseCode 301).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from resolver.names import Handle, ancestors, is_under
from resolver.sites import is_site_value
from resolver.values import HandleValue

__all__ = ["NotHere", "Refer", "Serve", "Zone"]


@dataclass(frozen=True, slots=True)
class Serve:
    pass


@dataclass(frozen=True, slots=True)
class Refer:
    prefix: str
    sites: tuple[HandleValue, ...]


@dataclass(frozen=True, slots=True)
class NotHere:
    reason: str


SERVE = Serve()


@dataclass(slots=True)
class Zone:
    """The prefixes a node answers for; updated as prefix handles are written."""

    own: str
    hosted: set[str] = field(default_factory=set)
    delegated: dict[str, tuple[HandleValue, ...]] = field(default_factory=dict)

    def learn(self, prefix: str, values: Iterable[HandleValue] | None) -> None:
        """Record that the prefix handle ``0.NA/prefix`` now holds ``values`` (None: it was deleted)."""
        if prefix == self.own or not is_under(prefix, self.own):
            return
        self.hosted.discard(prefix)
        self.delegated.pop(prefix, None)
        if values is None:
            return
        sites = tuple(v for v in values if is_site_value(v))
        if sites:
            self.delegated[prefix] = sites
        else:
            self.hosted.add(prefix)

    def load(self, records: Mapping[str, Iterable[HandleValue]], configured_hosts: Iterable[str] = ()) -> None:
        """Start from the stored prefix handles (named prefix -> values) and the configured hosted prefixes."""
        for prefix in configured_hosts:
            self.hosted.add(prefix)
        for prefix, values in records.items():
            self.learn(prefix, values)

    def route(self, handle: Handle) -> Serve | Refer | NotHere:
        zone = handle.zone
        if not is_under(zone, self.own):
            return NotHere(f"prefix {zone} is not served here: this node serves {self.own}")
        # Walk from just below our own prefix down to the handle's prefix: the first delegation wins.
        for prefix in reversed(ancestors(zone)):
            if prefix == self.own or not is_under(prefix, self.own):
                continue
            sites = self.delegated.get(prefix)
            if sites is not None:
                # The delegation record itself (0.NA/<prefix>) lives here, with the parent.
                if handle.is_prefix_handle and prefix == zone:
                    return SERVE
                return Refer(prefix, sites)
        if handle.is_prefix_handle or zone == self.own or zone in self.hosted:
            return SERVE
        return NotHere(f"prefix {zone} is not registered on this node (it serves {self.own})")
