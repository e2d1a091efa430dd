"""Which servers may be sent a client's credentials (resolver.trust): the identity's own prefix and
below it, or a trusted server; nothing else (issue 11, finding 1)."""

from __future__ import annotations

import pytest

from resolver.auth import Identity
from resolver.names import parse_identity
from resolver.trust import (
    channel_allowed,
    identity_prefix,
    is_this_machine,
    is_trusted,
    may_receive_credentials,
    private_channel,
    same_server,
)

TOPOLOGY = ("http://127.0.0.1:8100", "http://127.0.0.1:8300")
HOSTILE = "http://127.0.0.1:9999"


def identity(text: str) -> Identity:
    index, handle = parse_identity(text)
    return Identity(index, handle.key, handle.text)


@pytest.mark.parametrize(
    ("text", "prefix"),
    [("300:0.NA/88.118.8", "88.118.8"), ("300:0.na/88.118.8", "88.118.8"), ("300:88.119.6/ADMIN", "88.119.6")],
)
def test_the_prefix_of_an_identity(text: str, prefix: str) -> None:
    assert identity_prefix(identity(text)) == prefix


@pytest.mark.parametrize(
    ("who", "route", "allowed"),
    [
        ("300:0.NA/88.118.8", "88.118.8", True),  # its own prefix
        ("300:0.NA/88.118.8", "88.118.8.1", True),  # a prefix under it
        ("300:88.118.8/ADMIN", "88.118.8.1.2", True),
        ("300:0.NA/88.119.6", "88.118.8.1", False),  # another organisation's delegation
        ("300:0.NA/88.118.8", "88.118.80", False),  # segment-wise, not by characters
        ("300:0.NA/88.118.8.1", "88.118.8", False),  # the parent is not the identity's
        ("300:0.NA/88.118.8", None, False),  # no prefix named: trusted servers only
    ],
)
def test_an_untrusted_server_gets_credentials_only_for_the_identitys_own_prefixes(
    who: str, route: str | None, allowed: bool
) -> None:
    assert may_receive_credentials(identity(who), route, HOSTILE, TOPOLOGY) is allowed


def test_a_trusted_server_gets_any_credentials() -> None:
    for url in ("http://127.0.0.1:8300", "http://localhost:8300", "https://[::1]:8300"):
        assert may_receive_credentials(identity("300:0.NA/88.119.6"), "88.118.8", url, TOPOLOGY)
    assert may_receive_credentials(None, "88.118.8", "http://127.0.0.1:8100", TOPOLOGY)
    assert not may_receive_credentials(None, "88.118.8", HOSTILE, TOPOLOGY)


def test_same_server_compares_host_and_port() -> None:
    assert same_server("http://127.0.0.1:8300", "http://localhost:8300/")
    assert same_server("http://10.0.0.5", "https://10.0.0.5:80")
    assert not same_server("http://127.0.0.1:8300", "http://127.0.0.1:8301")
    assert not same_server("http://10.0.0.5:8300", "http://127.0.0.1:8300")
    assert not same_server("http://h:notaport", "http://h:notaport")
    assert is_trusted("http://127.0.0.1:8100", TOPOLOGY) and not is_trusted(HOSTILE, TOPOLOGY)


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        (None, True),  # a Unix socket
        ("203.0.113.7", False),
        ("10.0.0.5", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_whether_a_peer_is_this_machine(address: str | None, local: bool) -> None:
    assert is_this_machine(address) is local


@pytest.mark.parametrize(
    ("url", "private"),
    [
        ("https://10.0.0.5:8300", True),
        ("HTTPS://idres.example.cn", True),
        ("http://127.0.0.1:8300", True),
        ("http://localhost:8300", True),
        ("http://[::1]:8300", True),
        ("http://10.0.0.5:8300", False),
        ("http://idres.example.cn", False),
    ],
)
def test_a_private_channel_is_https_or_this_machine(url: str, private: bool) -> None:
    assert private_channel(url) is private


def test_plain_http_elsewhere_carries_credentials_only_to_trusted_servers_when_the_operator_allows() -> None:
    trusted = ["http://10.0.0.5:8300"]
    assert channel_allowed("https://10.0.0.9:8300", (), allow_plain=False)
    assert not channel_allowed("http://10.0.0.5:8300", trusted, allow_plain=False)
    assert channel_allowed("http://10.0.0.5:8300", trusted, allow_plain=True)
    assert not channel_allowed("http://10.0.0.9:8300", trusted, allow_plain=True)
