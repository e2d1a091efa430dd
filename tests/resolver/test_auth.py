"""Basic credentials, hashed secret keys and HS_ADMIN / HS_VLIST authorisation (resolver.auth)."""

from __future__ import annotations

import base64
import functools
from typing import Any

import pytest

import resolver.auth
from resolver.auth import (
    PBKDF2_ITERATIONS,
    Identity,
    Perm,
    admin_grants,
    hash_secret,
    hash_secret_values,
    is_hashed,
    parse_basic,
    verify_secret,
)
from resolver.errors import AuthenticationFailed
from resolver.records import Record
from resolver.values import HandleValue, value_from_wire

FAST = 1_000  # PBKDF2 iterations where the cost is not the point


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# -- secrets -----------------------------------------------------------------------------------------


def test_hash_secret_uses_pbkdf2_with_the_default_cost() -> None:
    stored = hash_secret("s3cret")
    scheme, iterations, salt, digest = stored.split("$")
    assert (scheme, int(iterations)) == ("pbkdf2-sha256", PBKDF2_ITERATIONS)
    assert PBKDF2_ITERATIONS >= 100_000
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert "s3cret" not in stored
    assert verify_secret("s3cret", stored)


def test_verify_secret() -> None:
    stored = hash_secret("pa:ss 密码", iterations=FAST)
    assert verify_secret("pa:ss 密码", stored)
    assert not verify_secret("pa:ss", stored)
    assert not verify_secret("", stored)


def test_same_secret_hashes_differently() -> None:
    assert hash_secret("x", iterations=FAST) != hash_secret("x", iterations=FAST)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "s3cret",  # clear text never matches
        "pbkdf2-sha256$1000$AAAA",
        "pbkdf2-sha256$1000$AAAA$AAAA$AAAA",
        "md5$1000$AAAA$AAAA",
        "pbkdf2-sha256$many$AAAA$AAAA",
        "pbkdf2-sha256$0$AAAA$AAAA",
        "pbkdf2-sha256$-5$AAAA$AAAA",
        "pbkdf2-sha256$1000$A$AAAA",  # bad padding
        "pbkdf2-sha256$1000$AAAA$密码",
    ],
)
def test_malformed_stored_secret_never_matches(stored: str) -> None:
    assert verify_secret("s3cret", stored) is False


def test_stored_secret_from_another_scheme_never_matches() -> None:
    good = hash_secret("s3cret", iterations=FAST)
    assert not verify_secret("s3cret", good.replace("pbkdf2-sha256", "pbkdf2-sha1", 1))


def test_absurd_iteration_count_never_matches() -> None:
    assert verify_secret("s3cret", "pbkdf2-sha256$99999999999999999999$AAAA$AAAA") is False


def test_iteration_counts_past_twice_ours_are_refused_without_running_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 11, finding 10: 1,999,999 iterations were run at every login (seconds of a worker each).
    ran: list[int] = []
    real = resolver.auth.hashlib.pbkdf2_hmac

    def counting(name: str, secret: bytes, salt: bytes, iterations: int) -> bytes:
        ran.append(iterations)
        return real(name, secret, salt, iterations)

    monkeypatch.setattr(resolver.auth.hashlib, "pbkdf2_hmac", counting)
    for iterations in (1_999_999, 2 * PBKDF2_ITERATIONS + 1):
        stored = f"pbkdf2-sha256${iterations}$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"
        assert verify_secret("s3cret", stored) is False
        assert not is_hashed(stored)
    assert ran == []
    assert is_hashed(f"pbkdf2-sha256${2 * PBKDF2_ITERATIONS}$AAAA$AAAA")  # room to raise our count once


def test_is_hashed() -> None:
    assert is_hashed(hash_secret("x", iterations=FAST))
    assert not is_hashed("x")
    assert not is_hashed("pbkdf2-sha256$1$2")
    assert not is_hashed(None)


@pytest.fixture
def fast_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver.auth, "hash_secret", functools.partial(hash_secret, iterations=FAST))


def seckey(index: int, data: Any, fmt: str = "string", vtype: str = "HS_SECKEY") -> HandleValue:
    return HandleValue(index, vtype, fmt, data, permissions="1100", timestamp=5)


@pytest.mark.usefixtures("fast_hash")
def test_hash_secret_values_hashes_clear_secret_keys_only() -> None:
    already = hash_secret("old", iterations=FAST)
    url = HandleValue(1, "URL", "string", "https://x")
    values = (url, seckey(300, "s3cret"), seckey(301, "lower", vtype="hs_seckey"), seckey(302, already))
    out = hash_secret_values(values)
    assert out[0] == url
    assert is_hashed(out[1].value) and verify_secret("s3cret", out[1].value)
    assert is_hashed(out[2].value) and verify_secret("lower", out[2].value)
    assert out[3] == values[3]  # hashing twice would lock the owner out
    # everything but the data is kept
    assert (out[1].index, out[1].type, out[1].permissions, out[1].timestamp) == (300, "HS_SECKEY", "1100", 5)


@pytest.mark.usefixtures("fast_hash")
def test_hash_secret_values_leaves_non_string_formats() -> None:
    v = seckey(300, "AAEC", fmt="base64")
    assert hash_secret_values([v]) == (v,)


# -- Basic credentials ---------------------------------------------------------------------------------


def test_parse_basic_with_percent_encoded_colon() -> None:
    identity, secret = parse_basic(basic("300%3A0.NA/88.118.8", "secret"))
    assert identity == Identity(300, "0.NA/88.118.8", "0.NA/88.118.8")
    assert str(identity) == "300:0.NA/88.118.8"
    assert secret == "secret"


def test_parse_basic_as_pyhandle_sends_it() -> None:
    identity, secret = parse_basic(basic("300%3A88.118.8/ADMIN", "pw"))
    assert (identity.index, identity.key, secret) == (300, "88.118.8/ADMIN", "pw")


def test_secret_may_contain_colons_and_scheme_is_case_insensitive() -> None:
    _, secret = parse_basic("basic " + base64.b64encode(b"300%3A88.118.8/ADMIN:a:b:c").decode())
    assert secret == "a:b:c"


def test_identity_key_is_canonical_and_text_as_written() -> None:
    identity, _ = parse_basic(basic("0300%3a0.na/88.118.ab", "s"))
    assert (identity.index, identity.key, identity.text) == (300, "0.NA/88.118.AB", "0.na/88.118.ab")


def test_percent_encoded_handle_characters() -> None:
    identity, _ = parse_basic(basic("300%3A88.118.8/a%25b%3Ac", "s"))
    assert identity.key == "88.118.8/a%b:c"


def test_empty_secret_is_allowed_to_reach_verification() -> None:
    assert parse_basic(basic("300%3A88.118.8/A", ""))[1] == ""


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "unsupported authorization scheme"),
        ("Bearer abc", "unsupported authorization scheme 'Bearer': use Basic"),
        ('Handle sessionId="x"', "use Basic"),
        ("Basic !!!!", "not valid base64"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "not valid base64 of UTF-8"),
        ("Basic é", "the Basic credentials cannot be read"),  # issue 11, finding 3: was a 500
        ("Basic 密码", "the Basic credentials cannot be read"),
        ("Basic " + base64.b64encode(b"300%3A88.118.8/A").decode(), "no ':' between user and secret"),
        ("Basic", "no ':' between user and secret"),
        # the colon in the user was not percent-encoded: the user becomes "300"
        (basic("300:88.118.8/A", "s"), "colon written %3A"),
        (basic("admin", "s"), "INDEX:HANDLE"),
        (basic("abc%3A88.118.8/A", "s"), "identity index must be a non-negative decimal integer"),
        (basic("300%3A88.118.8", "s"), "invalid handle in identity"),
        (basic("300%3A20.500/A", "s"), "national prefix 88"),
        (basic("99999999999%3A88.118.8/A", "s"), "too large"),
    ],
)
def test_malformed_basic_header_fails_authentication(header: str, message: str) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        parse_basic(header)
    assert (info.value.response_code, info.value.http_status) == (403, 401)
    assert message in info.value.message


# -- HS_ADMIN and HS_VLIST -----------------------------------------------------------------------------

ME = Identity(300, "0.NA/88.118.8", "0.NA/88.118.8")
OTHER = Identity(300, "88.118.8/OTHER", "88.118.8/OTHER")


def hs_admin(handle: str, index: Any, permissions: Any = "*", value_index: int = 100) -> HandleValue:
    raw = {"handle": handle, "index": index, "permissions": permissions}
    return value_from_wire(
        {"index": value_index, "type": "HS_ADMIN", "data": {"format": "admin", "value": raw}}, position=1, now=0
    )


def vlist(index: int, *members: tuple[str, int]) -> HandleValue:
    data = [{"handle": h, "index": i} for h, i in members]
    return value_from_wire({"index": index, "type": "HS_VLIST", "data": data}, position=1, now=0)


class Lookups:
    """An injected record lookup over a dict, recording what it was asked."""

    def __init__(self, records: dict[str, tuple[HandleValue, ...]] | None = None) -> None:
        self.records = records or {}
        self.asked: list[str] = []

    async def __call__(self, key: str) -> Record | None:
        self.asked.append(key)
        values = self.records.get(key)
        return None if values is None else Record(key, values)


async def test_direct_reference_grants() -> None:
    lookup = Lookups()
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118.8", 300)], lookup)
    assert not await admin_grants(OTHER, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118.8", 300)], lookup)


async def test_reference_index_must_match_unless_zero() -> None:
    assert not await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118.8", 301)], Lookups())
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118.8", 0)], Lookups())
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118.8", "300")], Lookups())


async def test_reference_prefix_is_case_insensitive() -> None:
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.na/88.118.8", 300)], Lookups())


@pytest.mark.parametrize(
    ("permission", "granted"),
    [
        (Perm.ADD_HANDLE, True),
        (Perm.DELETE_HANDLE, True),
        (Perm.ADD_DERIVED_PREFIX, False),
        (Perm.DELETE_DERIVED_PREFIX, False),
        (Perm.MODIFY_VALUE, True),
        (Perm.REMOVE_VALUE, True),
        (Perm.ADD_VALUE, True),
        (Perm.MODIFY_ADMIN, True),
        (Perm.REMOVE_ADMIN, True),
        (Perm.ADD_ADMIN, True),
        (Perm.READ_VALUE, True),
        (Perm.LIST_HANDLES, False),
    ],
)
async def test_pyhandle_default_permissions(permission: int, granted: bool) -> None:
    admin = hs_admin("0.NA/88.118.8", "200", "011111110011")
    me = Identity(200, "0.NA/88.118.8", "0.NA/88.118.8")
    assert await admin_grants(me, permission, [admin], Lookups()) is granted


@pytest.mark.parametrize("bit", range(12))
async def test_each_bit_grants_only_its_permission(bit: int) -> None:
    admin = hs_admin("0.NA/88.118.8", 300, 1 << bit)
    for permission in range(12):
        assert await admin_grants(ME, permission, [admin], Lookups()) is (permission == bit), Perm.NAMES[permission]


async def test_short_permission_string_is_the_low_bits() -> None:
    admin = hs_admin("0.NA/88.118.8", 300, "11")
    assert await admin_grants(ME, Perm.DELETE_HANDLE, [admin], Lookups())
    assert not await admin_grants(ME, Perm.ADD_DERIVED_PREFIX, [admin], Lookups())


async def test_any_admin_value_may_grant() -> None:
    values = [hs_admin("88.118.8/OTHER", 300, "*"), hs_admin("0.NA/88.118.8", 300, "1", value_index=101)]
    assert await admin_grants(ME, Perm.ADD_HANDLE, values, Lookups())
    assert not await admin_grants(ME, Perm.DELETE_HANDLE, values, Lookups())


async def test_values_that_are_not_hs_admin_are_ignored() -> None:
    fake = HandleValue(100, "ADMIN", "admin", {"handle": "0.NA/88.118.8", "index": 300, "permissions": "1" * 12})
    assert not await admin_grants(ME, Perm.ADD_HANDLE, [fake, vlist(200, ("0.NA/88.118.8", 300))], Lookups())


async def test_group_membership_through_hs_vlist() -> None:
    lookup = Lookups({"0.NA/88.118": (vlist(200, ("88.118.8/OTHER", 300), ("0.na/88.118.8", 300)),)})
    admin = [hs_admin("0.NA/88.118", 200)]
    assert await admin_grants(ME, Perm.ADD_VALUE, admin, lookup)
    stranger = Identity(300, "88.118.8/STRANGER", "88.118.8/STRANGER")
    assert not await admin_grants(stranger, Perm.ADD_VALUE, admin, lookup)


async def test_group_is_chosen_by_its_index() -> None:
    lookup = Lookups({"0.NA/88.118": (vlist(200, ("88.118.8/OTHER", 300)), vlist(201, ("0.NA/88.118.8", 300)))})
    assert not await admin_grants(ME, Perm.ADD_VALUE, [hs_admin("0.NA/88.118", 200)], lookup)
    assert await admin_grants(ME, Perm.ADD_VALUE, [hs_admin("0.NA/88.118", 201)], lookup)
    assert await admin_grants(ME, Perm.ADD_VALUE, [hs_admin("0.NA/88.118", 0)], lookup)


async def test_group_without_the_permission_bit_grants_nothing() -> None:
    lookup = Lookups({"0.NA/88.118": (vlist(200, ("0.NA/88.118.8", 300)),)})
    admin = [hs_admin("0.NA/88.118", 200, "011111110011")]
    assert not await admin_grants(ME, Perm.LIST_HANDLES, admin, lookup)
    assert lookup.asked == []


async def test_group_member_index_zero_means_any_index() -> None:
    lookup = Lookups({"0.NA/88.118": (vlist(200, ("0.NA/88.118.8", 0)),)})
    assert await admin_grants(ME, Perm.ADD_VALUE, [hs_admin("0.NA/88.118", 200)], lookup)


async def test_nested_groups() -> None:
    lookup = Lookups(
        {
            "0.NA/88": (vlist(200, ("0.NA/88.118", 200)),),
            "0.NA/88.118": (vlist(200, ("88.118.8/GROUPS", 7)),),
            "88.118.8/GROUPS": (vlist(7, ("0.NA/88.118.8", 300)),),
        }
    )
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88", 200)], lookup)
    assert lookup.asked == ["0.NA/88", "0.NA/88.118", "88.118.8/GROUPS"]


async def test_missing_group_record_grants_nothing() -> None:
    assert not await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118", 200)], Lookups())


async def test_vlist_loop_terminates_with_false() -> None:
    lookup = Lookups(
        {
            "0.NA/88.118": (vlist(200, ("88.118.1/B", 200)),),
            "88.118.1/B": (vlist(200, ("0.NA/88.118", 200), ("88.118.1/B", 200)),),
        }
    )
    assert not await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118", 200)], lookup)
    assert len(lookup.asked) <= 2


async def test_loop_does_not_hide_a_member_reached_later() -> None:
    lookup = Lookups(
        {
            "0.NA/88.118": (vlist(200, ("0.NA/88.118", 200), ("88.118.1/B", 200)),),
            "88.118.1/B": (vlist(200, ("0.NA/88.118", 200), ("0.NA/88.118.8", 300)),),
        }
    )
    assert await admin_grants(ME, Perm.ADD_HANDLE, [hs_admin("0.NA/88.118", 200)], lookup)
