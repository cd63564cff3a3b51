"""The guard against server-side request forgery (service/net/guard.py), tested offline:
every IPv6 spelling of a non-public IPv4 address is refused, so are the non-global IPv6
ranges and malformed URLs, and global addresses pass. Literal addresses only: getaddrinfo
answers them without DNS, and nothing here connects anywhere (no address is ever sent
through a running stack, where a guard that failed would send traffic off the machine)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InvalidArgument
from service.jobs.webhooks import Webhooks
from service.net.guard import UrlRefused, checked_address, is_public
from tests.fuzzing import examples

NON_PUBLIC_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8",
                 "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "192.0.0.0/29",
                 "198.18.0.0/15", "240.0.0.0/4", "224.0.0.0/4", "192.0.2.0/24"]
NON_GLOBAL_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
                 "2001:db8::/32", "100::/64", "2001::/32", "64:ff9b:1::/48", "::/96",
                 "::ffff:0:0:0/96"]
METADATA = ipaddress.IPv4Address("169.254.169.254")


def in_network(network: str) -> st.SearchStrategy:
    net = ipaddress.ip_network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


non_public_v4 = st.one_of(st.just(METADATA), *(in_network(n) for n in NON_PUBLIC_V4))
public_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address).filter(is_public)


def embeddings(v4: ipaddress.IPv4Address, low: int, server: ipaddress.IPv4Address
               ) -> list[ipaddress.IPv6Address]:
    """`v4` in every IPv6 spelling that carries it (`low`: random bits where a form has
    free bits; `server`: a Teredo server address)."""
    n = int(v4)
    six = ipaddress.IPv6Address
    return [
        six(0xFFFF << 32 | n),                        # IPv4-mapped ::ffff:a.b.c.d
        six(n),                                       # IPv4-compatible ::a.b.c.d
        six(0xFFFF << 48 | n),                        # IPv4-translated ::ffff:0:a.b.c.d
        six(0x64FF9B << 96 | n),                      # NAT64 64:ff9b::a.b.c.d
        six(0x0064FF9B0001 << 80 | (low & 0xFFFF) << 64 | n << 32),  # local-use NAT64
        six(0x2002 << 112 | n << 80 | (low & (2**80 - 1))),          # 6to4
        six(0x20010000 << 96 | int(server) << 64 | (low & 0xFFFFFFFF) << 32
            | (n ^ 0xFFFFFFFF)),                      # Teredo, `v4` as the client
        six(0x20010000 << 96 | n << 64 | (low & 0xFFFFFFFF) << 32
            | (int(server) ^ 0xFFFFFFFF)),            # Teredo, `v4` as the server
    ]


def refused(url: str) -> str:
    with pytest.raises(UrlRefused) as caught:
        asyncio.run(checked_address(url, frozenset()))
    return caught.value.reason


@examples(300)
@given(non_public_v4, st.integers(0, 2**80 - 1), public_v4)
def test_every_ipv6_spelling_of_a_non_public_ipv4_is_refused(v4, low, server) -> None:
    assert not is_public(v4)
    for address in embeddings(v4, low, server):
        assert not is_public(address), (str(v4), str(address))


@examples(200)
@given(st.one_of(*(in_network(n) for n in NON_GLOBAL_V6)))
def test_non_global_ipv6_is_refused(address) -> None:
    assert not is_public(address), str(address)


@examples(300)
@given(public_v4, st.integers(0, 2**80 - 1))
def test_global_addresses_pass(v4, low) -> None:
    assert is_public(v4)
    # Spellings that reach the same public IPv4 address are as public as it is.
    assert is_public(ipaddress.IPv6Address(0xFFFF << 32 | int(v4)))
    assert is_public(ipaddress.IPv6Address(0x64FF9B << 96 | int(v4)))
    six_to_four = ipaddress.IPv6Address(0x2002 << 112 | int(v4) << 80 | low)
    assert is_public(six_to_four) == six_to_four.is_global


@examples(200)
@given(st.integers(0, 2**125 - 1).map(lambda i: ipaddress.IPv6Address(0x2 << 124 | i)))
def test_global_unicast_ipv6_passes_unless_it_carries_a_non_public_ipv4(address) -> None:
    carried = address.sixtofour or (address.teredo or (None, None))[1]
    if address.is_global and address.teredo is None:
        assert is_public(address) == (carried is None or is_public(carried)), str(address)
    else:
        assert not is_public(address), str(address)


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::169.254.169.254", "::ffff:0:a9fe:a9fe",
    "::ffff:169.254.169.254", "64:ff9b:1::a9fe:a9fe", "2002:7f00:1::1", "::127.0.0.1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe", "fe80::1", "fd00::1", "::1",
])
def test_the_issue_s_addresses_are_refused_in_urls(address: str) -> None:
    assert refused(f"http://[{address}]/latest") == "IMAGE_URL_FORBIDDEN"


@pytest.mark.parametrize("url", [
    "http://[::1/x", "http://a..b/", f"http://{'a' * 64}.example/x.png", "http://[]/",
    "http://host:99999/x", "http://[v1.x]/", "http://a\x00b/", "http://.", "ftp://x/y",
    "http://user:pw@8.8.8.8/", "http:///nohost", f"http://{'a.' * 200}com/",
])
def test_malformed_urls_are_refused_not_raised(url: str) -> None:
    assert refused(url) == "INVALID_IMAGE_URL"


def test_an_allowed_host_may_be_private() -> None:
    address = asyncio.run(checked_address("http://127.0.0.1:8080/x.png",
                                          frozenset({"127.0.0.1:8080"})))
    assert address == "127.0.0.1"


@pytest.mark.parametrize("url", ["http://[::1/x", "http://a..b/hook", "http://[::ffff:0:a9fe:a9fe]/",
                                 f"https://{'h' * 64}.example/hook"])
def test_webhook_urls_take_the_same_guard(url: str) -> None:
    webhooks = Webhooks(b"secret", frozenset(), timeout=1)
    try:
        with pytest.raises(InvalidArgument) as refused:
            asyncio.run(webhooks.check(url))
    finally:
        asyncio.run(webhooks.aclose())
    assert refused.value.param == "webhook_url"
    assert refused.value.reason in ("INVALID_WEBHOOK_URL", "WEBHOOK_URL_FORBIDDEN")
