"""A small authoritative DNS server on loopback (UDP and TCP), for SPF, DKIM and DMARC tests."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zone
import pytest

EXAMPLE_ZONE = """\
$ORIGIN example.com.
$TTL 300
@       IN SOA  ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@       IN NS   ns1.example.com.
ns1     IN A    127.0.0.153
@       IN A    192.0.2.10
mail    IN A    192.0.2.10
@       IN MX   10 mail.example.com.
@       IN TXT  "v=spf1 ip4:192.0.2.0/24 ip4:127.0.0.1 -all"
_dmarc  IN TXT  "v=DMARC1; p=reject; adkim=r; aspf=r; pct=100"
www     IN CNAME mail.example.com.
"""
"""A zone for example.com with A, MX, SPF, DMARC and a CNAME; add DKIM keys with add_records()."""

_SYNTHETIC_SOA = "ns1.{0} hostmaster.{0} 1 3600 600 86400 300"


@dataclass(frozen=True, slots=True)
class Query:
    """One query the server received."""

    name: str
    rdtype: str
    transport: str  # "udp" or "tcp"


class DnsServer:
    """Authoritative answers for the zones it was given; REFUSED for everything else.

    Answers carry AA; a missing name gets NXDOMAIN, an existing name (or empty non-terminal)
    without the asked type gets NODATA, both with the zone's SOA. In-zone CNAMEs are followed;
    a UDP answer too large for the client sets TC so the client retries over TCP.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self.queries: list[Query] = []
        self.silent: set[dns.name.Name] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._udp, self._tcp = _bind_pair(host, port)
        self.port: int = self._udp.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True),
            threading.Thread(target=self._serve_tcp, name="dns-tcp", daemon=True),
        ]

    def add_zone(self, text: str, origin: str | None = None) -> dns.zone.Zone:
        """Load a zone from zone-file text (``$ORIGIN`` in the text or ``origin``). A zone
        without an SOA gets a synthetic one, so NXDOMAIN and NODATA answers stay well formed."""
        zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
        apex = _origin(zone)
        if zone.get_rdataset(apex, dns.rdatatype.SOA) is None:
            soa = _SYNTHETIC_SOA.format(apex.to_text())
            zone.replace_rdataset(
                apex,
                dns.rdataset.from_text("IN", "SOA", 300, soa),
            )
        with self._lock:
            self.zones[apex] = zone
        return zone

    def add_records(self, origin: str, text: str) -> None:
        """Add records in zone-file syntax (names relative to ``origin``) to a loaded zone."""
        zone = self.zones[dns.name.from_text(origin)]
        extra = dns.zone.from_text(
            f"$ORIGIN {zone.origin}\n$TTL 300\n{text}",
            origin=zone.origin,
            relativize=False,
            check_origin=False,
        )
        with self._lock:
            for name, node in extra.nodes.items():
                for rdataset in node.rdatasets:
                    zone.replace_rdataset(name, rdataset)

    def silence(self, name: str) -> None:
        """Never answer queries for `name` or names under it (a DNS timeout, on demand)."""
        with self._lock:
            self.silent.add(dns.name.from_text(name))

    def resolver(self) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.host]
        res.port = self.port
        res.lifetime = 2.0
        return res

    def start(self) -> DnsServer:
        """Start answering (two daemon threads)."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the sockets."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._udp.close()
        self._tcp.close()

    def answer(self, wire: bytes, transport: str) -> dns.message.Message | None:
        """The response to one query in wire format (None when it cannot be parsed)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        self.queries.append(
            Query(question.name.to_text(), dns.rdatatype.to_text(question.rdtype), transport)
        )
        if any(question.name.is_subdomain(name) for name in self.silent):
            return None
        with self._lock:
            self._resolve(question.name, question.rdtype, response)
        return response

    def _find_zone(self, name: dns.name.Name) -> dns.zone.Zone | None:
        matches = [z for origin, z in self.zones.items() if name.is_subdomain(origin)]
        return max(matches, key=lambda z: len(_origin(z)), default=None)

    def _resolve(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> None:
        zone = self._find_zone(name)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        for _ in range(8):  # CNAME chain limit
            node = zone.get_node(name)
            if node is None:
                if not _has_descendant(zone, name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                _add_soa(zone, response)
                return
            found = [r for r in node.rdatasets if rdtype in (r.rdtype, dns.rdatatype.ANY)]
            if found:
                for rdataset in found:
                    response.answer.append(_rrset(name, rdataset))
                return
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None:
                _add_soa(zone, response)
                return
            response.answer.append(_rrset(name, cname))
            name = cname[0].target
            if not name.is_subdomain(_origin(zone)):
                return  # the client chases a target outside this zone itself

    def _serve_udp(self) -> None:
        self._udp.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                wire, client = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            response = self.answer(wire, "udp")
            if response is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(_udp_wire(response, _udp_limit(wire)), client)

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._serve_tcp_connection(conn)

    def _serve_tcp_connection(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        while (header := _recv_exact(conn, 2)) is not None:
            wire = _recv_exact(conn, struct.unpack("!H", header)[0])
            if wire is None:
                return
            response = self.answer(wire, "tcp")
            if response is None:
                return
            out = response.to_wire()
            conn.sendall(struct.pack("!H", len(out)) + out)


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    # UDP and TCP must share one port number; with port 0, retry until both binds succeed.
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port:
                raise
            continue
        tcp.listen(16)
        return udp, tcp
    raise OSError("no port free for both UDP and TCP")


def _has_descendant(zone: dns.zone.Zone, name: dns.name.Name) -> bool:
    # An empty non-terminal (e.g. _domainkey.example.com) exists: NODATA, not NXDOMAIN.
    return any(other != name and other.is_subdomain(name) for other in zone.nodes)


def _add_soa(zone: dns.zone.Zone, response: dns.message.Message) -> None:
    soa = zone.get_rdataset(_origin(zone), dns.rdatatype.SOA)
    if soa is not None:
        response.authority.append(_rrset(_origin(zone), soa))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    for rdata in rdataset:
        rrset.add(rdata, rdataset.ttl)
    return rrset


def _origin(zone: dns.zone.Zone) -> dns.name.Name:
    assert zone.origin is not None  # from_text always sets it, or raises
    return zone.origin


def _udp_limit(query_wire: bytes) -> int:
    query = dns.message.from_wire(query_wire)
    return max(512, query.payload) if query.edns >= 0 else 512


def _udp_wire(response: dns.message.Message, limit: int) -> bytes:
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return response.to_wire()


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started DnsServer with no zones; add them with ``dns_server.add_zone(text)``."""
    server = DnsServer().start()
    yield server
    server.stop()
