"""What an authoritative node answers for: serve, refer or not here (resolver.zone)."""

from __future__ import annotations

import pytest

from resolver.names import parse_handle
from resolver.sites import site_value
from resolver.values import HandleValue
from resolver.zone import NotHere, Refer, Serve, Zone

ADMIN = HandleValue(100, "HS_ADMIN", "admin", {"handle": "0.NA/88.118.8", "index": 300, "permissions": "1" * 12})
PRIMARY = site_value(1, "127.0.0.1", 8300, primary=True, description="automaker")
MIRROR = site_value(2, "127.0.0.1", 8301, primary=False, description="automaker mirror")


def secondary() -> Zone:
    """The automotive secondary node: owns 88.118, hosts 88.118.9, delegates 88.118.8."""
    zone = Zone("88.118")
    zone.load({"88.118.8": (ADMIN, PRIMARY, MIRROR), "88.118.9": (ADMIN,)})
    return zone


def route(zone: Zone, handle: str) -> Serve | Refer | NotHere:
    return zone.route(parse_handle(handle))


@pytest.mark.parametrize(
    "handle",
    [
        "88.118/INDUSTRY-CATALOGUE",
        "88.118.9/BATCH-1",  # hosted here
        "88.118.9/batch-1",
        "0.NA/88.118",  # its own prefix handle
        "0.NA/88.118.9",
        "0.NA/88.118.8",  # the delegation record lives with the parent
        "0.na/88.118.8",
        "0.NA/88.118.77",  # an unregistered prefix: the parent answers "not found" for it
    ],
)
def test_served_here(handle: str) -> None:
    assert route(secondary(), handle) == Serve()


@pytest.mark.parametrize(
    "handle",
    [
        "88.118.8/VIN-LFV3A23C5K3000417",
        "0.NA/88.118.8.1",  # a prefix derived from the delegated one
        "88.118.8.1/X",
    ],
)
def test_referred_to_the_delegated_node_with_only_its_sites(handle: str) -> None:
    assert route(secondary(), handle) == Refer("88.118.8", (PRIMARY, MIRROR))


@pytest.mark.parametrize(
    ("handle", "zone"),
    [
        ("88.119.6/PACK-1", "88.119.6"),
        ("88/ROOT", "88"),
        ("0.NA/88", "88"),
        ("0.NA/88.119", "88.119"),
        ("88.1180/X", "88.1180"),  # shares characters, not a segment
    ],
)
def test_unrelated_prefixes_are_not_here(handle: str, zone: str) -> None:
    result = route(secondary(), handle)
    assert isinstance(result, NotHere)
    assert f"prefix {zone} is not served here" in result.reason
    assert "88.118" in result.reason


@pytest.mark.parametrize("handle", ["88.118.7/X", "88.118.9.1/X"])
def test_unregistered_derived_prefix_is_not_here(handle: str) -> None:
    result = route(secondary(), handle)
    assert isinstance(result, NotHere)
    assert "is not registered on this node" in result.reason


def test_top_level_node_refers_each_level_to_its_own_node() -> None:
    top = Zone("88")
    top.load({"88.118": (PRIMARY,), "88.119": (MIRROR,)})
    assert route(top, "88/X") == Serve()
    assert route(top, "0.NA/88.118") == Serve()
    assert route(top, "88.118.8/X") == Refer("88.118", (PRIMARY,))
    assert route(top, "0.NA/88.119.6") == Refer("88.119", (MIRROR,))


def test_shallowest_delegation_wins() -> None:
    zone = Zone("88")
    zone.load({"88.118": (PRIMARY,), "88.118.8": (MIRROR,)})
    assert route(zone, "88.118.8/X") == Refer("88.118", (PRIMARY,))


def test_any_hs_site_type_is_a_delegation() -> None:
    zone = Zone("88.118")
    site6 = HandleValue(3, "HS_SITE.6", "site", PRIMARY.value)
    zone.learn("88.118.8", [site6])
    assert route(zone, "88.118.8/X") == Refer("88.118.8", (site6,))


def test_configured_hosted_prefixes() -> None:
    zone = Zone("88.118")
    zone.load({}, configured_hosts=["88.118.9"])
    assert route(zone, "88.118.9/X") == Serve()


def test_learn_moves_a_prefix_from_hosted_to_delegated_and_back() -> None:
    zone = Zone("88.118")
    zone.learn("88.118.8", [ADMIN])
    assert route(zone, "88.118.8/X") == Serve()
    zone.learn("88.118.8", [ADMIN, PRIMARY])
    assert route(zone, "88.118.8/X") == Refer("88.118.8", (PRIMARY,))
    assert "88.118.8" not in zone.hosted
    zone.learn("88.118.8", [ADMIN])
    assert route(zone, "88.118.8/X") == Serve()
    assert "88.118.8" not in zone.delegated


def test_learn_new_sites_replaces_old_ones() -> None:
    zone = secondary()
    zone.learn("88.118.8", [MIRROR])
    assert route(zone, "88.118.8/X") == Refer("88.118.8", (MIRROR,))


@pytest.mark.parametrize("prefix", ["88.118.8", "88.118.9"])
def test_deleting_the_prefix_handle_forgets_the_prefix(prefix: str) -> None:
    zone = secondary()
    zone.learn(prefix, None)
    assert isinstance(route(zone, f"{prefix}/X"), NotHere)
    assert route(zone, f"0.NA/{prefix}") == Serve()


def test_deleting_a_configured_hosted_prefix_forgets_it() -> None:
    zone = Zone("88.118")
    zone.load({}, configured_hosts=["88.118.9"])
    zone.learn("88.118.9", None)
    assert isinstance(route(zone, "88.118.9/X"), NotHere)


@pytest.mark.parametrize("prefix", ["88.118", "88.119", "88"])
def test_learn_ignores_its_own_and_unrelated_prefixes(prefix: str) -> None:
    zone = Zone("88.118")
    zone.learn(prefix, [PRIMARY])
    assert zone.delegated == {} and zone.hosted == set()
    assert route(zone, "88.118/X") == Serve()
