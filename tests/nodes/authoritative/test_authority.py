"""The authority service itself (``nodes.authoritative.authority``), with no HTTP: writes, their refusals
and authentication, over ``MemoryStorage``."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from nodes.authoritative.authority import Authority
from nodes.authoritative.login_limits import LoginLimits, LoginLimitsConfig, Rate
from resolver.auth import Identity, hash_secret
from resolver.client import basic_auth
from resolver.config import Limits
from resolver.errors import (
    AuthenticationFailed,
    AuthenticationNeeded,
    HandleAlreadyExists,
    HandleNotFound,
    NotResponsible,
    PermissionDenied,
    ReadOnly,
    TooManyRequests,
    UpstreamError,
    ValueAlreadyExists,
    ValuesNotFound,
)
from resolver.names import parse_handle
from resolver.records import parse_put_body
from resolver.sites import site_value
from resolver.storage import Write
from resolver.values import HandleValue
from tests.conftest import FakeClock, topology_of
from tests.fakes import MemoryStorage

NOW = 1_700_000_000
SPEC = topology_of(
    {"sec": {"role": "secondary", "prefix": "88.118", "hosts": ["88.118.9"], "listen": "127.0.0.1:8118"}}
).node("sec")
OPERATOR = Identity(300, "0.NA/88.118", "0.NA/88.118")
USER = Identity(300, "88.118/USER", "88.118/USER")
FAST = 1_000  # PBKDF2 iterations of the secrets stored here: tests need no slow hashes


def values(*wire: dict[str, Any]) -> tuple[HandleValue, ...]:
    return parse_put_body(list(wire), handle_text="88.118/x", now=NOW)


def url(index: int, value: str) -> dict[str, Any]:
    return {"index": index, "type": "URL", "data": value}


def admin(index: int, handle: str, permissions: str) -> dict[str, Any]:
    grant = {"handle": handle, "index": 300, "permissions": permissions}
    return {"index": index, "type": "HS_ADMIN", "data": {"format": "admin", "value": grant}}


def seckey(secret: str) -> dict[str, Any]:
    return {"index": 300, "type": "HS_SECKEY", "data": hash_secret(secret, iterations=FAST)}


async def make_authority(*, read_only: bool = False) -> Authority:
    """88.118, hosting 88.118.9 (whose HS_ADMIN lets USER add handles) and delegating 88.118.8."""
    store = MemoryStorage()
    await store.write(
        [
            Write("0.NA/88.118", values(admin(100, "0.NA/88.118", "111111111111"), seckey("operator-pw"))),
            Write("0.NA/88.118.9", values(admin(100, "88.118/USER", "000000000001"))),
            Write("0.NA/88.118.8", (site_value(1, "127.0.0.1", 8300, primary=True, description="enterprise"),)),
            Write("88.118/USER", values(seckey("user-pw"))),
        ]
    )
    authority = Authority(SPEC, store, Limits(), read_only=read_only)
    await authority.start()
    return authority


@pytest.fixture
async def authority() -> Authority:
    return await make_authority()


async def put(
    authority: Authority,
    text: str,
    *wire: dict[str, Any],
    overwrite: bool = True,
    indexes: list[int] | None = None,
    identity: Identity | None = OPERATOR,
) -> tuple[bool, int]:
    result = await authority.put(
        parse_handle(text), values(*wire), overwrite=overwrite, indexes=indexes, identity=identity
    )
    assert result.handle == text
    return result.created, result.seq


async def stored(authority: Authority, key: str) -> dict[int, Any] | None:
    record = await authority.store.get(key)
    return None if record is None else {v.index: v.value for v in record.values}


# -- writes ------------------------------------------------------------------------------------------------------


async def test_create_and_a_second_create_is_refused(authority: Authority) -> None:
    created, seq = await put(authority, "88.118/CAR", url(1, "https://a"), overwrite=False)
    assert created and seq == await authority.store.last_seq()
    with pytest.raises(HandleAlreadyExists, match=r"88.118/CAR already exists \(overwrite=false\)") as info:
        await put(authority, "88.118/CAR", url(1, "https://b"), overwrite=False)
    assert (info.value.response_code, info.value.http_status) == (101, 409)
    assert await stored(authority, "88.118/CAR") == {1: "https://a"}


async def test_overwrite_replaces_the_record_and_an_unchanged_one_is_not_logged(authority: Authority) -> None:
    await put(authority, "88.118/CAR", url(1, "https://a"), url(2, "https://b"))
    created, seq = await put(authority, "88.118/CAR", url(1, "https://a2"))
    assert not created and seq > 0
    assert await stored(authority, "88.118/CAR") == {1: "https://a2"}
    last = await authority.store.last_seq()
    assert await put(authority, "88.118/CAR", url(1, "https://a2")) == (False, 0)
    assert await authority.store.last_seq() == last, "nothing changed, nothing logged"


async def test_index_writes_merge_into_the_record(authority: Authority) -> None:
    await put(authority, "88.118/CAR", url(1, "https://a"))
    assert (await put(authority, "88.118/CAR", url(3, "https://c"), overwrite=False, indexes=[3]))[0]
    assert await stored(authority, "88.118/CAR") == {1: "https://a", 3: "https://c"}
    with pytest.raises(ValueAlreadyExists, match=re.escape("a value with index 3 already exists")):
        await put(authority, "88.118/CAR", url(3, "https://x"), overwrite=False, indexes=[3])
    created, _ = await put(authority, "88.118/CAR", url(3, "https://c2"), overwrite=True, indexes=[3])
    assert not created and await stored(authority, "88.118/CAR") == {1: "https://a", 3: "https://c2"}
    with pytest.raises(HandleNotFound, match=re.escape("88.118/NONE does not exist, so values cannot be added to it")):
        await put(authority, "88.118/NONE", url(1, "https://a"), indexes=[1])


async def test_delete_a_record_or_some_of_its_values(authority: Authority) -> None:
    await put(authority, "88.118/CAR", url(1, "https://a"), url(2, "https://b"))
    result = await authority.delete(parse_handle("88.118/CAR"), indexes=[2], identity=OPERATOR)
    assert not result.created and await stored(authority, "88.118/CAR") == {1: "https://a"}
    with pytest.raises(ValuesNotFound, match=re.escape("no value with index 9")):
        await authority.delete(parse_handle("88.118/CAR"), indexes=[9], identity=OPERATOR)
    await authority.delete(parse_handle("88.118/CAR"), indexes=None, identity=OPERATOR)
    assert await stored(authority, "88.118/CAR") is None
    with pytest.raises(HandleNotFound, match=re.escape("88.118/CAR does not exist")):
        await authority.delete(parse_handle("88.118/CAR"), indexes=None, identity=OPERATOR)


async def test_the_own_prefix_handle_cannot_be_deleted(authority: Authority) -> None:
    with pytest.raises(
        PermissionDenied, match=re.escape("0.NA/88.118 is this node's own prefix handle and cannot be deleted")
    ):
        await authority.delete(parse_handle("0.NA/88.118"), indexes=None, identity=OPERATOR)
    assert await stored(authority, "0.NA/88.118") is not None


# -- refusals ------------------------------------------------------------------------------------------------------


async def test_the_hs_admin_chain_decides_what_a_user_may_do(authority: Authority) -> None:
    assert (await put(authority, "88.118.9/A", url(1, "https://a"), overwrite=False, identity=USER))[0]
    with pytest.raises(
        PermissionDenied, match=re.escape("300:88.118/USER may not delete handle on 88.118.9/A: no HS_ADMIN")
    ):
        await authority.delete(parse_handle("88.118.9/A"), indexes=None, identity=USER)
    with pytest.raises(PermissionDenied, match=re.escape("300:88.118/USER may not add handle on 88.118/B")) as info:
        await put(authority, "88.118/B", url(1, "https://b"), overwrite=False, identity=USER)
    assert (info.value.response_code, info.value.http_status) == (401, 403)
    with pytest.raises(PermissionDenied, match=re.escape("may not modify value on 88.118.9/A")):
        await put(authority, "88.118.9/A", url(1, "https://changed"), identity=USER)


async def test_writes_without_credentials_are_refused(authority: Authority) -> None:
    with pytest.raises(AuthenticationNeeded, match=r"writing 88.118/X needs credentials \(Basic"):
        await put(authority, "88.118/X", url(1, "https://x"), identity=None)
    with pytest.raises(AuthenticationNeeded, match=re.escape("deleting 88.118/X needs credentials")):
        await authority.delete(parse_handle("88.118/X"), indexes=None, identity=None)


async def test_a_delegated_prefix_is_written_on_its_own_node(authority: Authority) -> None:
    with pytest.raises(
        NotResponsible, match=re.escape("prefix 88.118.8 is delegated to http://127.0.0.1:8300: send writes there")
    ) as info:
        await put(authority, "88.118.8/X", url(1, "https://x"), identity=None)
    assert info.value.response_code == 301, "routing is decided before credentials"
    with pytest.raises(NotResponsible, match=re.escape("prefix 88.119 is not served here")):
        await put(authority, "88.119/X", url(1, "https://x"))
    with pytest.raises(NotResponsible, match=re.escape("88.118.7 is not registered on this node")):
        await authority.delete(parse_handle("88.118.7/X"), indexes=None, identity=OPERATOR)


async def test_a_read_only_node_refuses_writes() -> None:
    mirror = await make_authority(read_only=True)
    with pytest.raises(
        ReadOnly, match=re.escape("sec is a mirror and refuses writes; send them to its primary")
    ) as info:
        await put(mirror, "88.118/X", url(1, "https://x"))
    assert (info.value.response_code, info.value.http_status) == (7, 503)
    await mirror.set_read_only(None)
    await put(mirror, "88.118/X", url(1, "https://x"))
    await mirror.set_read_only("sec is being promoted")
    with pytest.raises(ReadOnly, match=re.escape("sec is being promoted")):
        await mirror.delete(parse_handle("88.118/X"), indexes=None, identity=OPERATOR)


# -- authentication ----------------------------------------------------------------------------------------------


async def test_a_wrong_secret_is_refused(authority: Authority) -> None:
    assert await authority.authenticate(basic_auth("300:88.118/USER", "user-pw")) == USER
    with pytest.raises(
        AuthenticationFailed, match=re.escape("authentication failed for 300:88.118/USER: wrong secret")
    ):
        await authority.authenticate(basic_auth("300:88.118/USER", "nope"))
    with pytest.raises(AuthenticationFailed, match=re.escape("300:88.118/NOBODY does not exist, so it cannot be")):
        await authority.authenticate(basic_auth("300:88.118/NOBODY", "x"))
    assert await authority.authenticate(None) is None


async def test_a_changed_secret_forgets_the_credentials_it_cached(authority: Authority) -> None:
    old = basic_auth("300:88.118/USER", "user-pw")
    assert await authority.authenticate(old) == USER  # now cached
    await put(authority, "88.118/USER", seckey("new-pw"))
    with pytest.raises(AuthenticationFailed, match=re.escape("wrong secret")):
        await authority.authenticate(old)
    assert await authority.authenticate(basic_auth("300:88.118/USER", "new-pw")) == USER


async def test_replicated_writes_forget_only_the_credentials_of_the_records_they_wrote(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mirror applies its primary's writes a page at a time: a page without USER's record keeps
    # USER's verified credentials (no PBKDF2 per page); one that changes its secret forgets them.
    from nodes.authoritative import authority as authority_module

    checks: list[str] = []
    real = authority_module.verify_secret

    def counting(secret: str, stored: str) -> bool:
        checks.append(secret)
        return real(secret, stored)

    monkeypatch.setattr(authority_module, "verify_secret", counting)
    old = basic_auth("300:88.118/USER", "user-pw")
    assert await authority.authenticate(old) == USER
    await authority.apply_replicated([Write(f"88.118.9/PART-{i}", values(url(1, f"https://x/{i}"))) for i in range(5)])
    assert await authority.authenticate(old) == USER
    assert checks == ["user-pw"], "verified once: the page did not touch 88.118/USER"
    await authority.apply_replicated([Write("88.118/USER", values(seckey("new-pw")))])
    with pytest.raises(AuthenticationFailed, match=re.escape("wrong secret")):
        await authority.authenticate(old)
    assert await authority.authenticate(basic_auth("300:88.118/USER", "new-pw")) == USER


class RecordingVerifier:
    """A remote verifier that says ``answer`` (or raises it) and records who it was asked about."""

    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, identity: Identity, authorization: str, own_url: str) -> bool:
        self.asked.append((str(identity), own_url))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_a_handle_served_here_is_decided_here_and_never_asked_of_the_tree(authority: Authority) -> None:
    # Issue 11, finding 4: an existing handle without HS_SECKEY at the index was asked of the tree,
    # which led back to this node, which asked the tree again... 600 requests, then a 502.
    verifier = RecordingVerifier()
    authority._remote_verifier = verifier
    await put(authority, "88.118/CAR", url(1, "https://a"))
    with pytest.raises(AuthenticationFailed) as info:
        await authority.authenticate(basic_auth("1:88.118/CAR", "x"))
    assert (info.value.http_status, info.value.response_code) == (401, 403)
    assert info.value.message == "1:88.118/CAR has no HS_SECKEY value at index 1, so it cannot be authenticated"
    with pytest.raises(AuthenticationFailed, match=re.escape("300:88.118.9/NOBODY does not exist")):
        await authority.authenticate(basic_auth("300:88.118.9/NOBODY", "x"))  # a hosted prefix: ours too
    assert verifier.asked == []
    # Served elsewhere: under a delegation, or the delegated prefix's own handle (its secret is there).
    assert await authority.authenticate(basic_auth("300:88.118.8/USER", "pw")) == Identity(
        300, "88.118.8/USER", "88.118.8/USER"
    )
    await authority.authenticate(basic_auth("300:0.NA/88.118.8", "pw"))
    assert verifier.asked == [("300:88.118.8/USER", SPEC.url), ("300:0.NA/88.118.8", SPEC.url)]


def limited(authority: Authority, clock: FakeClock) -> None:
    authority.login_limits = LoginLimits(
        LoginLimitsConfig(identity=Rate(3, 1 / 10), client=Rate(5, 1 / 10), max_keys=100), clock
    )


async def test_wrong_secrets_are_limited_per_identity_with_429(authority: Authority) -> None:
    # Issue 11, finding 10: ~19 guesses a second, never a 429.
    clock = FakeClock()
    limited(authority, clock)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed, match="wrong secret"):
            await authority.authenticate(basic_auth("300:88.118/USER", "guess"), client="10.0.0.1")
    with pytest.raises(TooManyRequests) as info:
        await authority.authenticate(basic_auth("300:88.118/USER", "user-pw"), client="10.0.0.2")
    assert (info.value.http_status, info.value.response_code, info.value.retry_after) == (429, 3, 10)
    assert "too many failed logins for 300:88.118/USER" in info.value.message
    # The operator, from the same client, is not affected; nor the user once the bucket refilled.
    assert await authority.authenticate(basic_auth("300:0.NA/88.118", "operator-pw"), client="10.0.0.1") == OPERATOR
    clock.advance(10)
    assert await authority.authenticate(basic_auth("300:88.118/USER", "user-pw"), client="10.0.0.2") == USER


async def test_a_check_that_could_not_be_made_does_not_count_as_a_failure(authority: Authority) -> None:
    limited(authority, FakeClock())
    authority._remote_verifier = RecordingVerifier(UpstreamError("home node down"))
    for _ in range(10):
        with pytest.raises(UpstreamError):
            await authority.authenticate(basic_auth("300:88.118.8/USER", "pw"), client="10.0.0.1")
    assert len(authority.login_limits.identities) == 0 and len(authority.login_limits.clients) == 0


async def test_a_principal_without_rights_learns_nothing_of_which_values_exist(authority: Authority) -> None:
    # Issue 11, finding 11: DELETE ?index=2 answered 403 but ?index=9 400, PUT ?index=2&overwrite=false 409.
    await put(authority, "88.118/CAR", url(1, "https://a"), url(2, "https://b"))

    async def refusal(write: Any) -> tuple[int, int, str]:
        with pytest.raises(PermissionDenied) as info:
            await write
        return info.value.http_status, info.value.response_code, info.value.message

    car = parse_handle("88.118/CAR")
    for existing, missing in [
        (authority.delete(car, indexes=[2], identity=USER), authority.delete(car, indexes=[9], identity=USER)),
        (
            put(authority, "88.118/CAR", url(2, "https://x"), overwrite=False, indexes=[2], identity=USER),
            put(authority, "88.118/CAR", url(9, "https://x"), overwrite=False, indexes=[9], identity=USER),
        ),
        (
            put(authority, "88.118/CAR", url(2, "https://x"), indexes=[2], identity=USER),
            put(authority, "88.118/CAR", url(9, "https://x"), indexes=[9], identity=USER),
        ),
    ]:
        first, second = await refusal(existing), await refusal(missing)
        assert first == second and first[:2] == (403, 401), (first, second)
        assert first[2].startswith("300:88.118/USER may not ")
    assert await stored(authority, "88.118/CAR") == {1: "https://a", 2: "https://b"}


async def test_concurrent_requests_with_one_header_share_one_check_and_one_try(authority: Authority) -> None:
    # A client opening many connections at once with the right secret must not spend the bucket (the
    # mirror catching up, a bulk load with --concurrency) nor pay PBKDF2 once per connection.
    limited(authority, FakeClock())
    verifier = RecordingVerifier()
    authority._remote_verifier = verifier
    header = basic_auth("300:88.118.8/USER", "pw")
    found = await asyncio.gather(*(authority.authenticate(header, client="10.0.0.1") for _ in range(20)))
    assert set(found) == {Identity(300, "88.118.8/USER", "88.118.8/USER")}
    assert len(verifier.asked) == 1, "one check for the twenty requests"
    wrong = basic_auth("300:88.118/USER", "guess")
    results = await asyncio.gather(
        *(authority.authenticate(wrong, client="10.0.0.1") for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, AuthenticationFailed) and "wrong secret" in r.message for r in results)
    assert await authority.authenticate(basic_auth("300:88.118/USER", "user-pw")) == USER, "one try spent, not 20"


async def test_clients_behind_the_recursive_node_are_limited_per_identity_only(authority: Authority) -> None:
    # Every client the recursive node forwards arrives from its address: limiting that address would let
    # one guesser lock every other client of the recursive node out.
    limited(authority, FakeClock())
    authority.proxies = frozenset({"10.0.0.9"})
    for n in range(6):  # past the per-client bucket (5), under nobody's per-identity bucket (3 each)
        with pytest.raises(AuthenticationFailed, match=re.escape(f"300:88.118/GUESS-{n} does not exist")):
            await authority.authenticate(basic_auth(f"300:88.118/GUESS-{n}", "guess"), client="10.0.0.9")
    assert await authority.authenticate(basic_auth("300:88.118/USER", "user-pw"), client="10.0.0.9") == USER
    for n in range(5):
        with pytest.raises(AuthenticationFailed):
            await authority.authenticate(basic_auth(f"300:88.118/GUESS-{n}", "guess"), client="10.0.0.1")
    with pytest.raises(TooManyRequests, match=re.escape("too many failed logins from 10.0.0.1")):
        await authority.authenticate(basic_auth("300:88.118/OPERATOR-GUESS", "x"), client="10.0.0.1")
