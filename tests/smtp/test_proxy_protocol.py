"""The PROXY protocol header parser, v1 and v2: what HAProxy sends, every malformed variant,
and property tests (round trips, any split, any bytes)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.smtp.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    VERSIONS,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

ANY = VERSIONS["any"]

# What haproxy 2.6 sent in front of a backend (shared/reference/test-peers-2.md, measured).
HAPROXY_V1 = b"PROXY TCP4 127.0.0.1 127.0.0.1 47954 55821\r\n"
HAPROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\xbf\x84\xa9\x0f"


def test_haproxy_headers_as_measured() -> None:
    assert parse_proxy_header(HAPROXY_V1 + b"EHLO", ANY) == (
        ProxyHeader(1, ("127.0.0.1", 47954), ("127.0.0.1", 55821)),
        len(HAPROXY_V1),
    )
    assert parse_proxy_header(HAPROXY_V2, ANY) == (
        ProxyHeader(2, ("127.0.0.1", 49028), ("127.0.0.1", 43279)),
        28,
    )


def test_v1_ipv6_and_unknown() -> None:
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"
    header, _ = parse_proxy_header(line, ANY) or (None, 0)
    assert header == ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535))
    # UNKNOWN: the rest of the line is ignored; the connection keeps the proxy's address.
    for unknown in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        assert parse_proxy_header(unknown, ANY) == (ProxyHeader(1), len(unknown))


def test_v2_local_unspec_unix_and_tlvs() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_proxy_header(local, ANY) == (ProxyHeader(2, local=True), 16)
    # LOCAL with addresses (haproxy's health checks send them): still the proxy's own.
    local_inet = V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse_proxy_header(local_inet, ANY) == (ProxyHeader(2, local=True), 28)
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert parse_proxy_header(unspec, ANY) == (ProxyHeader(2), 16)
    unix = V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216)
    assert parse_proxy_header(unix, ANY) == (ProxyHeader(2), 232)
    dgram = V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12)
    assert parse_proxy_header(dgram, ANY) == (ProxyHeader(2), 28)
    tlv = b"\x01\x00\x02h2" + b"\x05\x00\x00"
    with_tlvs = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 12 + len(tlv))
    with_tlvs += bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 25000, 25) + tlv
    header, used = parse_proxy_header(with_tlvs + b"rest", ANY) or (None, 0)
    assert used == len(with_tlvs)
    assert header == ProxyHeader(
        2, ("192.0.2.1", 25000), ("198.51.100.2", 25), ((1, b"h2"), (5, b""))
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"EHLO client.test\r\n", "no PROXY header"),
        (b"GET / HTTP/1.0\r\n", "no PROXY header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "TCP4|TCP6"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "TCP4|TCP6"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not IPv4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not IPv6"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "ASCII"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 100 + b"\r\n", "longer than 107"),
        (b"PROXY " + b"x" * 200, "longer than 107"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command"),
        (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "address family"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "shorter than its addresses"),
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "shorter than its addresses"),
        (V2_SIGNATURE + b"\x21\x11\x00\x0e" + bytes(14), "truncated TLV"),
        (V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x05x", "TLV longer"),
        (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1), "over 2048"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason.replace("|", r"\|")):
        parse_proxy_header(data, ANY)


def test_a_version_the_listener_does_not_accept_is_refused() -> None:
    with pytest.raises(ProxyHeaderError, match="v2 header, this listener accepts v1"):
        parse_proxy_header(HAPROXY_V2, VERSIONS["v1"])
    with pytest.raises(ProxyHeaderError, match="v1 header, this listener accepts v2"):
        parse_proxy_header(HAPROXY_V1, VERSIONS["v2"])
    assert parse_proxy_header(HAPROXY_V1, VERSIONS["v1"]) is not None
    assert parse_proxy_header(HAPROXY_V2, VERSIONS["v2"]) is not None


def test_incomplete_headers_wait_for_more() -> None:
    for whole in (HAPROXY_V1, HAPROXY_V2):
        for cut in range(len(whole)):
            assert parse_proxy_header(whole[:cut], ANY) is None, cut
    assert parse_proxy_header(b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 12), ANY) is None


# -- properties ------------------------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
endpoints4 = st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports))
endpoints6 = st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports))
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=64)), max_size=8).map(tuple)


@given(st.one_of(endpoints4, endpoints6))
def test_v1_round_trip(endpoints: tuple[tuple[str, int], tuple[str, int]]) -> None:
    header = ProxyHeader(1, *endpoints)
    data = encode_v1(header)
    assert len(data) <= V1_MAX_LENGTH
    assert parse_proxy_header(data + b"EHLO x\r\n", ANY) == (header, len(data))


@given(st.one_of(endpoints4, endpoints6), tlvs, st.booleans())
def test_v2_round_trip(
    endpoints: tuple[tuple[str, int], tuple[str, int]],
    extensions: tuple[tuple[int, bytes], ...],
    local: bool,
) -> None:
    if local:
        header = ProxyHeader(2, tlvs=extensions, local=True)
    else:
        header = ProxyHeader(2, *endpoints, tlvs=extensions)
    data = encode_v2(header)
    assert parse_proxy_header(data + b"\r\nEHLO", ANY) == (header, len(data))


@given(
    st.one_of(
        endpoints4.map(lambda e: encode_v1(ProxyHeader(1, *e))),
        endpoints6.map(lambda e: encode_v2(ProxyHeader(2, *e))),
    ),
    st.data(),
)
def test_every_prefix_waits_and_the_whole_parses(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data) - 1))
    assert parse_proxy_header(data[:cut], ANY) is None
    parsed = parse_proxy_header(data, ANY)
    assert parsed is not None and parsed[1] == len(data)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        parsed = parse_proxy_header(data, ANY)
    except ProxyHeaderError:
        return
    if parsed is None:
        # Waiting for more is only allowed while the bounds are not reached.
        assert len(data) < V1_MAX_LENGTH or data.startswith(V2_SIGNATURE)
        return
    header, used = parsed
    assert 0 < used <= len(data)
    assert used <= (V1_MAX_LENGTH if header.version == 1 else 16 + V2_MAX_PAYLOAD)


@given(st.binary(max_size=64), st.sampled_from([b"PROXY ", V2_SIGNATURE]))
def test_bytes_after_a_known_prefix_never_crash(tail: bytes, prefix: bytes) -> None:
    try:
        parsed = parse_proxy_header(prefix + tail, ANY)
    except ProxyHeaderError:
        return
    if parsed is not None:
        assert parsed[1] <= len(prefix + tail)
