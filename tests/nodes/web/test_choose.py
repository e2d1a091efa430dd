"""Which value the proxy redirects to (nodes.web.choose) and 10320/LOC choices (nodes.web.locations)."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

from nodes.web.choose import MAX_RECOGNIZED_TTL, cache_headers, choose_target, url_value
from nodes.web.locations import Location, choose_location, parse_locations
from nodes.web.urls import identifier_path, is_web_url, strip_scheme
from resolver.values import HandleValue
from tests.nodes.web.fakes import string

LOC = """<locations>
  <location id="0" href="https://eu.example/obj" weight="1" country="de" />
  <location id="1" href="https://cn.example/obj" weight="3" country="CN" />
  <location id="2" href="https://backup.example/obj" weight="0" country="us" />
</locations>"""


def url_of(values: list[HandleValue], **choice: object) -> str:
    """Where the proxy sends a request for ``values`` (the test fails if it sends it nowhere)."""
    target = choose_target(values, **choice)  # type: ignore[arg-type]
    assert target is not None
    return target.url


def href_of(location: Location | None) -> str:
    assert location is not None
    return location.href


def test_the_url_value_is_type_url_in_any_case_then_0_type_url_then_a_subtype() -> None:
    assert url_value([string(1, "URL.mobile", "https://m/"), string(2, "url", "https://a/")]) == string(
        2, "url", "https://a/"
    )
    assert url_value([string(1, "URL.mobile", "https://m/"), string(3, "0.TYPE/URL", "https://t/")]) == string(
        3, "0.TYPE/URL", "https://t/"
    )
    assert url_value([string(1, "MODEL", "x"), string(4, "URL.mobile", "https://m/")]) == string(
        4, "URL.mobile", "https://m/"
    )
    assert url_value([string(1, "MODEL", "https://not-a-url-type/")]) is None


def test_type_and_index_choose_the_value_and_urlappend_is_added() -> None:
    values = [string(1, "URL", "https://a/"), string(2, "DOC", "https://doc/"), string(3, "URL.mobile", "https://m/")]
    assert url_of(values) == "https://a/"
    assert url_of(values, types=["DOC"]) == "https://doc/"
    assert url_of(values, indexes=[3]) == "https://m/"
    assert url_of(values, types=["URL."]) == "https://a/"
    assert url_of(values, urlappend="?lang=zh") == "https://a/?lang=zh"
    assert choose_target(values, types=["NOPE"]) is None


def test_only_http_and_https_targets_are_redirected() -> None:
    for bad in ("javascript:alert(1)", "file:///etc/passwd", "ftp://x/", "https://", "mailto:a@b"):
        target = choose_target([string(1, "URL", bad)])
        assert target is not None and not target.redirect, bad
    target = choose_target([string(1, "URL", "HTTPS://A.example/x")])
    assert target is not None and target.redirect


def test_a_location_list_wins_over_the_url_value() -> None:
    values = [string(1, "URL", "https://plain/"), string(2, "10320/loc", LOC)]
    assert url_of(values, locatt="id:0") == "https://eu.example/obj"
    assert url_of(values, locatt="country:cn") == "https://cn.example/obj"
    # No usable location: the URL value.
    assert url_of([string(1, "URL", "https://plain/"), string(2, "10320/LOC", "<oops")]) == "https://plain/"


def test_locatt_can_name_a_location_of_weight_zero_which_a_draw_never_picks() -> None:
    locations = parse_locations(LOC)
    assert [loc.attributes["id"] for loc in locations] == ["0", "1", "2"]
    assert href_of(choose_location(locations, "country:us")) == "https://backup.example/obj"
    drawn = {href_of(choose_location(locations, None, random.Random(seed))) for seed in range(200)}
    assert drawn == {"https://eu.example/obj", "https://cn.example/obj"}


def test_the_draw_follows_the_weights_and_an_unmatched_locatt_falls_back_to_it() -> None:
    locations = parse_locations(LOC)
    rng = random.Random(1)
    picks = [href_of(choose_location(locations, "country:fr", rng)) for _ in range(4000)]
    share = picks.count("https://cn.example/obj") / len(picks)
    assert 0.7 < share < 0.8  # weight 3 of 4


def test_untrusted_location_lists_are_refused_not_expanded() -> None:
    bomb = '<!DOCTYPE l [<!ENTITY a "aaaa">]><locations><location href="https://x/&a;"/></locations>'
    assert parse_locations(bomb) == ()
    assert parse_locations("<other><location href='https://x/'/></other>") == ()
    script = parse_locations('<locations><location href="javascript:alert(1)"/></locations>')
    assert choose_location(script, None) is None


def test_cache_headers_follow_the_ttl_capped_at_two_days() -> None:
    headers = cache_headers(string(1, "URL", "https://a/", ttl=3_600), now=1_800_000_000)
    assert headers["Cache-Control"] == "max-age=3600"
    assert parsedate_to_datetime(headers["Expires"]).timestamp() == 1_800_003_600
    capped = cache_headers(string(1, "URL", "https://a/", ttl=10**9), now=0)
    assert capped["Cache-Control"] == f"max-age={MAX_RECOGNIZED_TTL}"


def test_urls_and_paths() -> None:
    assert is_web_url("http://a.example") and not is_web_url("http:///x") and not is_web_url("http://[::1")
    assert identifier_path("88.1/a b?c#d%") == "/88.1/a%20b%3Fc%23d%25"
    assert strip_scheme("hdl:88.1/x") == strip_scheme("info:hdl/88.1/x") == strip_scheme("URN:HDL:88.1/x") == "88.1/x"
