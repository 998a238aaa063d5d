"""The PROXY protocol header (HAProxy's, versions 1 and 2) a load balancer sends before SMTP.

A proxy in front of the listener opens its own connection and, before any SMTP, sends one
header saying who the real client is. `parse_proxy_header` reads it from the bytes received so
far (it does no I/O, so tests feed it any prefix); `read_proxy_header` reads it from a
connection under a deadline. Both are strict: a header that is malformed, too long or of a
version the listener does not accept is an error, never a guess, because the address it
carries decides relay permission.

Version 1 is one text line of at most 107 bytes: ``PROXY TCP4 192.0.2.1 198.51.100.2 56324
25\\r\\n`` (source address, destination address, source port, destination port), or
``PROXY UNKNOWN ...\\r\\n``. Version 2 is binary: a 12-byte signature, a version and command
byte, a family and transport byte, a 2-byte length, then the addresses and optional TLVs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass
from typing import Protocol

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""The longest version 1 line, CRLF included (the specification's bound)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_PAYLOAD = 2048
"""The most bytes accepted after the 16-byte version 2 header: the addresses (at most 216,
for AF_UNIX) and the TLVs a proxy adds (ALPN, authority, TLS details, a unique id)."""

_V2_HEADER = 16
_MIN_PREFIX = len(V2_SIGNATURE)

_COMMAND_LOCAL, _COMMAND_PROXY = 0x0, 0x1
_FAMILY_UNSPEC, _FAMILY_INET, _FAMILY_INET6, _FAMILY_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_STREAM = 0x1
_ADDRESS_LENGTHS = {_FAMILY_INET: 12, _FAMILY_INET6: 36, _FAMILY_UNIX: 216}

VERSIONS: dict[str, frozenset[int]] = {
    "off": frozenset(),
    "v1": frozenset({1}),
    "v2": frozenset({2}),
}
VERSIONS["any"] = frozenset({1, 2})
"""What a listener's ``proxy_protocol`` setting accepts, by its value."""


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header this listener accepts; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One PROXY header: who the client is, as the proxy says.

    `source` and `destination` are ``(address, port)``, or None when the header carries no
    TCP addresses (v1 ``UNKNOWN``, v2 ``LOCAL`` health checks, ``AF_UNSPEC``, ``AF_UNIX``, a
    transport other than a stream): the connection then keeps the proxy's own address.
    `tlvs` are version 2's type-length-value fields, as ``(type, value)``, in order.
    """

    version: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    local: bool = False
    """A version 2 LOCAL command: the proxy speaks for itself (a health check)."""


def parse_proxy_header(data: bytes, versions: frozenset[int]) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `data` and its length in bytes, or None if `data` is a
    valid but incomplete beginning of one. Raises `ProxyHeaderError` as soon as the bytes
    cannot be a header of one of `versions` (1, 2)."""
    if not data:
        return None
    if V2_SIGNATURE.startswith(data[:_MIN_PREFIX]):
        _check_accepted(2, versions)
        return _parse_v2(data) if len(data) >= _MIN_PREFIX else None
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        _check_accepted(1, versions)
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY header")


def _check_accepted(version: int, versions: frozenset[int]) -> None:
    if version not in versions:
        accepted = " or ".join(f"v{v}" for v in sorted(versions)) or "none"
        raise ProxyHeaderError(f"a PROXY v{version} header, this listener accepts {accepted}")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        return None
    if data[end - 1 : end] != b"\r":
        raise ProxyHeaderError("PROXY v1 line does not end with CRLF")
    line = data[: end - 1]
    if not line.isascii():
        raise ProxyHeaderError("PROXY v1 line is not ASCII")
    words = line.decode("ascii").split(" ")
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1), end + 1  # the rest of an UNKNOWN line is ignored, as specified
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if words[1] == "TCP4" else 6
    source = (_v1_address(words[2], version), _v1_port(words[4]))
    destination = (_v1_address(words[3], version), _v1_port(words[5]))
    return ProxyHeader(1, source, destination), end + 1


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address {text[:45]!r} is malformed") from None
    if address.version != version or "%" in text:
        raise ProxyHeaderError(f"PROXY v1 address {text[:45]!r} is not IPv{version}")
    return str(address)


def _v1_port(text: str) -> int:
    if not 1 <= len(text) <= 5 or not text.isdigit() or not text.isascii() or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {text[:6]!r} is malformed")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < _V2_HEADER:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, _MIN_PREFIX)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes, over {V2_MAX_PAYLOAD}")
    total = _V2_HEADER + length
    if len(data) < total:
        return None
    payload = data[_V2_HEADER:total]
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family not in (_FAMILY_UNSPEC, *_ADDRESS_LENGTHS):
        raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")
    address_length = _ADDRESS_LENGTHS.get(family, 0)
    if length < address_length:
        raise ProxyHeaderError("PROXY v2 header shorter than its addresses")
    tlvs = _tlvs(payload[address_length:])
    if command == _COMMAND_LOCAL:
        return ProxyHeader(2, tlvs=tlvs, local=True), total
    if family in (_FAMILY_INET, _FAMILY_INET6) and transport == _TRANSPORT_STREAM:
        size = 4 if family == _FAMILY_INET else 16
        src, dst = payload[:size], payload[size : 2 * size]
        sport, dport = struct.unpack_from("!HH", payload, 2 * size)
        source = (str(ipaddress.ip_address(src)), sport)
        destination = (str(ipaddress.ip_address(dst)), dport)
        return ProxyHeader(2, source, destination, tlvs), total
    return ProxyHeader(2, tlvs=tlvs), total


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the addresses; their lengths must fill the space exactly."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + 3 > len(data):
            raise ProxyHeaderError("PROXY v2 header with a truncated TLV")
        kind, size = struct.unpack_from("!BH", data, pos)
        if pos + 3 + size > len(data):
            raise ProxyHeaderError("PROXY v2 TLV longer than the header")
        out.append((kind, bytes(data[pos + 3 : pos + 3 + size])))
        pos += 3 + size
    return tuple(out)


def encode_v1(header: ProxyHeader) -> bytes:
    """The version 1 line for `header` (what a proxy sends; tests and tools use it)."""
    if header.source is None or header.destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if ":" in header.source[0] else "TCP4"
    src, dst = header.source, header.destination
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v2(header: ProxyHeader) -> bytes:
    """The version 2 bytes for `header` (what a proxy sends; tests and tools use it)."""
    tlvs = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in header.tlvs)
    command = _COMMAND_LOCAL if header.local else _COMMAND_PROXY
    if header.local or header.source is None or header.destination is None:
        family_transport, addresses = _FAMILY_UNSPEC << 4, b""
    else:
        src = ipaddress.ip_address(header.source[0])
        dst = ipaddress.ip_address(header.destination[0])
        family = _FAMILY_INET if src.version == 4 else _FAMILY_INET6
        family_transport = family << 4 | _TRANSPORT_STREAM
        ports = struct.pack("!HH", header.source[1], header.destination[1])
        addresses = src.packed + dst.packed + ports
    payload = addresses + tlvs
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", 0x20 | command, family_transport, len(payload))
        + (payload)
    )


class HeaderSource(Protocol):
    """What `read_proxy_header` needs from a connection (`SmtpStream` is one)."""

    def peek(self, limit: int) -> bytes:
        """Up to `limit` bytes received and not yet read, left in place."""
        ...

    def skip(self, size: int) -> None:
        """Drop `size` bytes received (they were read with `peek`)."""
        ...

    async def wait_for_more(self, timeout: float) -> None:
        """Wait until more bytes arrive; raises `StreamClosed` at the end of the stream."""
        ...


async def read_proxy_header(
    stream: HeaderSource, versions: frozenset[int], timeout: float
) -> ProxyHeader:
    """Read the header at the start of `stream` within `timeout` seconds, leaving what follows
    it. Raises `ProxyHeaderError`, `TimeoutError`, or the stream's end-of-stream error."""
    limit = _V2_HEADER + V2_MAX_PAYLOAD
    async with asyncio.timeout(timeout):
        while True:
            parsed = parse_proxy_header(stream.peek(limit), versions)
            if parsed is not None:
                header, size = parsed
                stream.skip(size)
                return header
            await stream.wait_for_more(timeout)
