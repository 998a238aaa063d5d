"""One run of the differential per test session: start the daemons once, sign the opendkim
part of the corpus, send every message through opendkim + opendmarc and through rspamd
(milters behind one Postfix), and through mailgate's plugins; the tests compare."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from mailgate import Transaction
from tests.differential import corpus, daemons, mailgate_side
from tests.differential.corpus import Case
from tests.differential.daemons import Delivered
from tests.differential.keys import make_keys
from tests.differential.zones import serve
from tests.peers.opendkim import OpenDkim
from tests.peers.opendmarc import OpenDmarc, start_port53_dns
from tests.peers.postfix import Postfix
from tests.peers.process import stop_all
from tests.peers.rspamd import Rspamd
from tests.peers.workdir import PeerDirs

CANONICALISATIONS = ("relaxed/relaxed", "simple/simple", "relaxed/simple")


@dataclass(frozen=True, slots=True)
class Run:
    """The corpus and what each side made of every message."""

    cases: list[Case]
    opendkim_opendmarc: dict[str, Delivered]  # by case name
    rspamd: dict[str, Delivered]
    mailgate: dict[str, Transaction]
    seconds: float


@pytest.fixture(scope="session")
def differential(peer_dirs: PeerDirs) -> Iterator[Run]:
    """The whole corpus through every side, once."""
    started = time.monotonic()
    keys = make_keys(peer_dirs.new("differential-keys"))
    dns = start_port53_dns()
    serve(dns, keys)
    signers = {
        canon: OpenDkim(
            peer_dirs.new("differential-opendkim-s"),
            "s",
            keys.opendkim,
            extra={"Canonicalization": canon},
        )
        for canon in CANONICALISATIONS
    }
    verifier = OpenDkim(
        peer_dirs.new("differential-opendkim-v"),
        "v",
        keys.opendkim,
        dns=dns,
        extra={"DNSTimeout": "2"},
    )
    # The A-R of a failure is wanted too, not only a 550.
    opendmarc = OpenDmarc(
        peer_dirs.new("differential-opendmarc"), dns, extra={"RejectFailures": "false"}
    )
    rspamd = Rspamd(peer_dirs.new("differential-rspamd"), dns)
    peers: list[OpenDkim | OpenDmarc | Rspamd] = [*signers.values(), verifier, opendmarc, rspamd]
    postfix = Postfix(peer_dirs.new("differential-postfix"))
    try:
        for signer in signers.values():
            signer.start()
        verifier.start()
        opendmarc.start()
        rspamd.start()
        sign_ports = {c: postfix.add_listener([s.milter]) for c, s in signers.items()}
        verify_port = postfix.add_listener([verifier.milter, opendmarc.milter])
        rspamd_port = postfix.add_listener([rspamd.milter])
        postfix.start()

        signed = sign_with_opendkim(postfix, sign_ports)
        cases = corpus.build(keys, signed)
        with ThreadPoolExecutor(2) as pool:
            od = pool.submit(daemons.send_all, verify_port, cases, "opendkim@local.test")
            rs = pool.submit(daemons.send_all, rspamd_port, cases, "rspamd@local.test")
            ours = asyncio.run(mailgate_side.run_all(f"{dns.host}:{dns.port}", cases))
            od_refused, rs_refused = od.result(), rs.result()
        yield Run(
            cases,
            daemons.collect(postfix, "opendkim@local.test", od_refused),
            daemons.collect(postfix, "rspamd@local.test", rs_refused),
            ours,
            time.monotonic() - started,
        )
    finally:
        postfix.stop()
        stop_all(p.daemon for p in peers if p.daemon is not None)
        dns.stop()


def sign_with_opendkim(postfix: Postfix, ports: dict[str, int]) -> dict[str, bytes]:
    """The OPENDKIM_TEMPLATES signed by opendkim, each on its canonicalisation's listener
    (from 127.0.0.1, which opendkim signs for), read back from the Maildir."""
    refused: dict[str, str] = {}
    for canon, port in ports.items():
        batch = [
            Case(name, "127.0.0.1", "alice@alpha.example.com", data)
            for name, (c, data) in corpus.OPENDKIM_TEMPLATES.items()
            if c == canon
        ]
        refused |= daemons.send_all(port, batch, "signed@local.test", xclient=False)
    delivered = daemons.collect(postfix, "signed@local.test", refused)
    assert not any(d.refused for d in delivered.values()), delivered
    signed = {name: daemons.strip_delivery_headers(d.data) for name, d in delivered.items()}
    for name, data in signed.items():
        assert b"DKIM-Signature:" in data, f"opendkim did not sign {name}"
    return signed
