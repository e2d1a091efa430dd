"""HS_SITE values for delegations and the servers a referral points at (resolver.sites)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from resolver.sites import (
    MAX_SITE_SERVERS,
    SiteServer,
    is_site_type,
    is_site_value,
    normal_host,
    site_data,
    site_servers,
    site_value,
)
from resolver.values import DEFAULT_TTL, HandleValue, value_from_wire, value_to_wire


def test_site_data_is_the_handle_net_json_form() -> None:
    assert site_data("127.0.0.1", 8200, primary=True, description="Automotive") == {
        "version": 1,
        "protocolVersion": "2.10",
        "serialNumber": 1,
        "primarySite": True,
        "multiPrimary": False,
        "attributes": [{"name": "desc", "value": "Automotive"}],
        "servers": [
            {
                "serverId": 1,
                "address": "127.0.0.1",
                "interfaces": [{"query": True, "admin": True, "protocol": "HTTP", "port": 8200}],
            }
        ],
    }


def test_mirror_site_takes_no_admin_requests() -> None:
    data: Any = site_data("127.0.0.1", 8101, primary=False, description="Chengdu", serial=7)
    assert (data["primarySite"], data["serialNumber"]) == (False, 7)
    assert data["servers"][0]["interfaces"][0]["admin"] is False


def test_site_value() -> None:
    v = site_value(2, "127.0.0.1", 8101, primary=False, description="Chengdu")
    assert (v.index, v.type, v.format, v.ttl, v.timestamp, v.permissions) == (
        2,
        "HS_SITE",
        "site",
        DEFAULT_TTL,
        0,
        "1110",
    )
    assert site_value(1, "h", 1, primary=True, description="", ttl=60).ttl == 60


@given(
    index=st.integers(1, 2**31 - 1),
    host=st.sampled_from(["127.0.0.1", "::1", "node.example.cn"]),
    port=st.integers(1, 65535),
    primary=st.booleans(),
    description=st.text(max_size=40),
    ttl=st.integers(0, 2**31 - 1),
)
def test_site_value_round_trips_through_the_wire(
    index: int, host: str, port: int, primary: bool, description: str, ttl: int
) -> None:
    v = site_value(index, host, port, primary=primary, description=description, ttl=ttl)
    assert value_from_wire(value_to_wire(v), position=1, now=0) == v
    (server,) = site_servers([value_from_wire(value_to_wire(v), position=1, now=0)])
    assert server.primary is primary
    assert server.description == description
    assert server.url.endswith(f":{port}")


def test_site_servers_primary_first_order_kept() -> None:
    values = [
        site_value(1, "10.0.0.1", 8101, primary=False, description="mirror A"),
        site_value(2, "10.0.0.2", 8100, primary=True, description="primary"),
        site_value(3, "10.0.0.3", 8102, primary=False, description="mirror B"),
    ]
    assert site_servers(values) == [
        SiteServer("http://10.0.0.2:8100", True, "primary"),
        SiteServer("http://10.0.0.1:8101", False, "mirror A"),
        SiteServer("http://10.0.0.3:8102", False, "mirror B"),
    ]


def test_site_servers_builds_urls() -> None:
    data = {
        "primarySite": True,
        "attributes": [{"name": "other", "value": "x"}],
        "servers": [
            {
                "serverId": 1,
                "address": "::1",
                "interfaces": [
                    {"query": True, "protocol": "HTTPS", "port": 443},
                    {"query": True, "protocol": "TCP", "port": 2641},  # native protocol: not ours
                    {"query": False, "protocol": "HTTP", "port": 8000},  # admin only
                ],
            },
            {"serverId": 2, "address": "[fe80::1]", "interfaces": [{"protocol": "HTTP", "port": 80}]},
            {"serverId": 3, "address": "site.example", "interfaces": [{"protocol": "HTTP", "port": 8080}]},
        ],
    }
    v = value_from_wire({"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": data}}, position=1, now=0)
    assert site_servers([v]) == [
        SiteServer("https://[::1]:443", True, ""),
        SiteServer("http://[fe80::1]:80", True, ""),
        SiteServer("http://site.example:8080", True, ""),
    ]


def test_site_servers_ignores_values_that_are_not_sites() -> None:
    site = site_value(1, "10.0.0.1", 8100, primary=True, description="d")
    admin = HandleValue(100, "HS_ADMIN", "admin", {"handle": "0.NA/88", "index": 300, "permissions": "1" * 12})
    wrong_format = HandleValue(2, "HS_SITE", "string", "10.0.0.9:80")
    other_type = HandleValue(3, "SITE", "site", site.value)
    site6 = HandleValue(4, "HS_SITE.6", "site", site_data("10.0.0.6", 81, primary=False, description="six"))
    assert site_servers([admin, wrong_format, other_type, site, site6]) == [
        SiteServer("http://10.0.0.1:8100", True, "d"),
        SiteServer("http://10.0.0.6:81", False, "six"),
    ]


def test_one_predicate_says_what_a_site_value_is() -> None:
    data = site_data("10.0.0.1", 8100, primary=True, description="d")
    for name in ("HS_SITE", "hs_site", "HS_SITE.6", "HS_SITE.PREFIX"):
        assert is_site_type(name) and is_site_value(HandleValue(1, name, "site", data)), name
    assert not is_site_type("SITE") and not is_site_type("HS_ADMIN")
    assert not is_site_value(HandleValue(1, "HS_SITE", "string", "10.0.0.9:80")), "site data is needed too"
    assert not is_site_value(HandleValue(1, "SITE", "site", data))


def test_no_sites_no_servers() -> None:
    assert site_servers([]) == []


# -- bounded servers per referral (issue 11, finding 7) -------------------------------------------


def _many(addresses: list[tuple[str, int]], *, primary: bool = True) -> HandleValue:
    data = {
        "primarySite": primary,
        "servers": [
            {"serverId": i + 1, "address": host, "interfaces": [{"protocol": "HTTP", "port": port}]}
            for i, (host, port) in enumerate(addresses)
        ],
    }
    return value_from_wire(
        {"index": 1, "type": "HS_SITE", "data": {"format": "site", "value": data}}, position=1, now=0
    )


def test_a_referral_naming_hundreds_of_servers_yields_at_most_the_cap_primaries_first() -> None:
    mirror = _many([("10.0.0.1", 81)], primary=False)
    flood = _many([("127.0.0.1", 20000 + i) for i in range(300)])
    servers = site_servers([mirror, flood])
    assert len(servers) == MAX_SITE_SERVERS == 16
    assert servers[0] == SiteServer("http://127.0.0.1:20000", True, "")
    assert all(s.primary for s in servers)  # the cap keeps primaries; the mirror is the one left out


def test_spellings_of_one_server_count_once() -> None:
    spellings = ["127.0.0.1", "127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "127.0.0.1.", "[127.0.0.1]"]
    value = _many([(host, 8300) for host in spellings] + [("LOCALHOST", 8300), ("localhost.", 8300)])
    assert [s.url for s in site_servers([value, value])] == ["http://127.0.0.1:8300", "http://localhost:8300"]
    six = _many([("::1", 80), ("0:0:0:0:0:0:0:1", 80), ("[::1]", 80), ("::1", 81)])
    assert [s.url for s in site_servers([six])] == ["http://[::1]:80", "http://[::1]:81"]


def test_addresses_a_url_cannot_name_are_dropped() -> None:
    for address in ["evil/../x", "a b", "host:80/x", "127.0.0.256", "1.2.3.4.5", "", "a..b", "09.1.1.1"]:
        assert normal_host(address) is None, address
    value = _many([("evil/../healthz?", 80), ("10.0.0.1", 80)])
    assert site_servers([value]) == [SiteServer("http://10.0.0.1:80", True, "")]
