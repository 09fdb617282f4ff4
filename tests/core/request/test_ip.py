"""The client address: peer, trusted proxies, forwarding headers, anonymisation."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from atrack_core._request import (
    ContextConfig,
    anonymize_ip,
    build_request_context,
    client_ip,
)
from tests.core.request.helpers import DEFAULT, PROXIES, view

# --------------------------------------------------------------------------- ip


def ip_of(
    config: ContextConfig, peer: str | None, headers: Mapping[str, str] | None = None
) -> str | None:
    headers = headers or {}
    result = client_ip(peer, headers, config)
    assert build_request_context(view(headers=headers, client=peer), config).ip_address == result
    return result


def test_ip_is_the_peer_by_default() -> None:
    assert ip_of(DEFAULT, "134.122.17.144") == "134.122.17.144"


def test_forged_forwarding_headers_ignored_by_default() -> None:
    headers = {"x-forwarded-for": "1.2.3.4", "forwarded": "for=5.6.7.8"}
    assert ip_of(DEFAULT, "134.122.17.144", headers) == "134.122.17.144"
    # Even when the peer is a private address: nothing is trusted unless configured.
    assert ip_of(DEFAULT, "10.0.0.2", headers) == "10.0.0.2"


def test_forwarding_headers_ignored_when_peer_not_trusted() -> None:
    headers = {"x-forwarded-for": "1.2.3.4"}
    assert ip_of(PROXIES, "134.122.17.144", headers) == "134.122.17.144"


def test_trusted_proxy_single_hop() -> None:
    headers = {"x-forwarded-for": "134.122.17.144"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_trusted_proxy_several_hops_skip_trusted_stop_at_first_untrusted() -> None:
    # The client forged "6.6.6.6"; the real client is the first untrusted from the right.
    headers = {"x-forwarded-for": "6.6.6.6, 134.122.17.144, 10.1.2.3, 192.0.2.1"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_trusted_proxy_all_hops_trusted_uses_left_most() -> None:
    headers = {"x-forwarded-for": "10.9.9.9, 10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.9.9.9"


def test_trusted_proxy_no_header_keeps_peer() -> None:
    assert ip_of(PROXIES, "10.0.0.2", {}) == "10.0.0.2"


@pytest.mark.parametrize("bad", ["unknown", "not-an-ip", "", "999.1.1.1", "_hidden"])
def test_invalid_hop_stops_walk_at_last_good(bad: str) -> None:
    headers = {"x-forwarded-for": f"134.122.17.144, {bad}, 10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.1.2.3"


def test_xff_with_ports_and_ipv6() -> None:
    headers = {"x-forwarded-for": "[2001:db8::1]:4711, 10.1.2.3:80"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "2001:db8::1"
    headers = {"x-forwarded-for": "134.122.17.144:5555"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_forwarded_header() -> None:
    headers = {
        "forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, '
        "For=10.1.2.3;by=10.0.0.1"
    }
    assert ip_of(PROXIES, "10.0.0.2", headers) == "2001:db8:cafe::17"


@pytest.mark.parametrize("node", ["unknown", "_hidden", '"_SEVKISEK"', "", "by=1.2.3.4"])
def test_forwarded_unknown_or_obfuscated_stops(node: str) -> None:
    element = node if node.startswith("by=") else f"for={node}"
    headers = {"forwarded": f"for=1.2.3.4, {element}, for=10.1.2.3"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "10.1.2.3"


def test_x_forwarded_for_preferred_over_forwarded() -> None:
    headers = {"x-forwarded-for": "134.122.17.144", "forwarded": "for=5.6.7.8"}
    assert ip_of(PROXIES, "10.0.0.2", headers) == "134.122.17.144"


def test_ipv6_trusted_proxy_range() -> None:
    headers = {"x-forwarded-for": "134.122.17.144, 2001:db8:ffff:1::9"}
    assert ip_of(PROXIES, "2001:db8:ffff::1", headers) == "134.122.17.144"
    assert ip_of(PROXIES, "2001:db8:eeee::1", headers) == "2001:db8:eeee::1"


def test_ipv4_mapped_peer_normalised() -> None:
    assert ip_of(DEFAULT, "::ffff:134.122.17.144") == "134.122.17.144"
    headers = {"x-forwarded-for": "::ffff:134.122.17.144"}
    assert ip_of(PROXIES, "::ffff:10.0.0.2", headers) == "134.122.17.144"


def test_trust_all_also_trusts_unix_socket_peers() -> None:
    config = ContextConfig(trusted_proxies="*")
    headers = {"x-forwarded-for": "134.122.17.144, 10.1.1.1"}
    # Every hop is trusted, so the left-most is the client.
    assert ip_of(config, None, headers) == "134.122.17.144"
    assert ip_of(config, "unix:/run/app.sock", {"forwarded": "for=1.2.3.4"}) == "1.2.3.4"
    assert ip_of(config, None, {}) is None
    assert ip_of(config, None, {"x-forwarded-for": "unknown"}) is None
    assert ip_of(config, "10.0.0.2", {}) == "10.0.0.2"
    # Without "*", a non-IP peer gives no address whatever the headers say.
    assert ip_of(PROXIES, None, headers) is None


def test_mapped_trusted_range_means_ipv4_range() -> None:
    config = ContextConfig(trusted_proxies=["::ffff:10.0.0.0/104"])
    assert ip_of(config, "10.0.0.2", {"x-forwarded-for": "1.2.3.4"}) == "1.2.3.4"


@pytest.mark.parametrize("peer", [None, "", "testclient", "unix:/tmp/sock", "1.2.3", "[::1"])
def test_unusable_peer_gives_no_ip(peer: str | None) -> None:
    assert ip_of(DEFAULT, peer) is None


def test_peer_with_port_or_zone() -> None:
    assert ip_of(DEFAULT, "134.122.17.144:443") == "134.122.17.144"
    assert ip_of(DEFAULT, "fe80::1%eth0") == "fe80::1"
    assert ip_of(DEFAULT, "2001:DB8:0::1") == "2001:db8::1"  # normalised


def test_ip_anonymize() -> None:
    config = ContextConfig(ip="anonymize")
    assert ip_of(config, "134.122.17.144") == "134.122.17.0"
    assert ip_of(config, "2001:db8:85a3:8d3:1319:8a2e:370:7348") == "2001:db8:85a3::"
    proxied = ContextConfig(ip="anonymize", trusted_proxies="10.0.0.0/8")
    assert ip_of(proxied, "10.0.0.2", {"x-forwarded-for": "134.122.17.144"}) == "134.122.17.0"


def test_ip_none() -> None:
    config = ContextConfig(ip="none", trusted_proxies=["10.0.0.0/8"])
    assert ip_of(config, "134.122.17.144") is None
    assert ip_of(config, "10.0.0.2", {"x-forwarded-for": "1.2.3.4"}) is None


def test_anonymize_ip_function() -> None:
    assert anonymize_ip("134.122.17.144") == "134.122.17.0"
    assert anonymize_ip("::ffff:1.2.3.4") == "1.2.3.0"
    assert anonymize_ip("2001:db8:1:2::3") == "2001:db8:1::"
    with pytest.raises(ValueError, match="not an IP address"):
        anonymize_ip("nope")


def test_long_forwarding_header_is_bounded_and_safe() -> None:
    hops = ", ".join(["10.1.1.1"] * 5000)
    assert ip_of(PROXIES, "10.0.0.2", {"x-forwarded-for": "1.2.3.4, " + hops}) == "10.1.1.1"
    junk = "x" * 100_000
    assert ip_of(PROXIES, "10.0.0.2", {"x-forwarded-for": junk}) == "10.0.0.2"
