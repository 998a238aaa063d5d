"""The corpus through mailgate: one pipeline of the real spf, dkim, arc and dmarc plugins
(their shipped defaults, except that nothing is refused at MAIL FROM and no client is
skipped), asking the same DNS server as the daemons, each message in a session of its own as
the SMTP listener runs it."""

from __future__ import annotations

import asyncio
import io

from mailgate import Address, Message, Session, Transaction
from mailgate.authentication_results.collect import results_of
from mailgate.authentication_results.header import header_value
from mailgate.config import Dynamic
from mailgate.dns import DnsSettings
from mailgate.message import parse_header_block
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.plugins.arc import Arc, ArcSettings
from mailgate.plugins.dkim import Dkim, DkimSettings
from mailgate.plugins.dmarc import Dmarc, DmarcSettings
from mailgate.plugins.spf import Spf, SpfSettings
from tests.differential.corpus import Case

AUTHSERV_ID = "mx.mailgate.example.org"
CONCURRENCY = 8


def pipeline(nameserver: str) -> Pipeline:
    """spf, dkim, arc and dmarc in their conf.d order, DNS from `nameserver` (``ip:port``)."""
    dns = DnsSettings(nameservers=[nameserver], timeout=2.0)
    return Pipeline(
        [
            EnabledPlugin(
                "spf",
                Spf(
                    SpfSettings(
                        reject=Dynamic.fixed([]), tempfail=Dynamic.fixed([]), skip_networks=[]
                    ),
                    dns=dns,
                ),
            ),
            EnabledPlugin("dkim", Dkim(DkimSettings(), dns=dns)),
            EnabledPlugin("arc", Arc(ArcSettings(), dns=dns)),
            EnabledPlugin("dmarc", Dmarc(DmarcSettings(skip_networks=[]), dns=dns)),
        ]
    )


async def run_case(pipe: Pipeline, case: Case) -> Transaction:
    """One SMTP session of `case` through `pipe`; the transaction with its results, and the
    Authentication-Results value the core would write in ``notes["authentication_results"]``."""
    session = Session(client_ip=case.client, client_port=40000)
    tx = Transaction(Address(case.mail_from) if case.mail_from else Address(""))
    rcpt = Address("bob@example.org")
    head, _, body = case.data.partition(b"\r\n\r\n")
    try:
        await pipe.connect(session)
        await pipe.helo(session, case.helo)
        session.helo = case.helo
        await pipe.mail(session, tx)
        await pipe.rcpt(session, tx, rcpt)
        tx.recipients.append(rcpt)
        await pipe.data(session, tx)
        tx.message = Message(parse_header_block(head + b"\r\n"), io.BytesIO(body))
        tx.notes["verdict"] = await pipe.message(session, tx)
        tx.notes["authentication_results"] = header_value(AUTHSERV_ID, results_of(session, tx))
    finally:
        await pipe.disconnect(session)
    return tx


async def run_all(nameserver: str, cases: list[Case]) -> dict[str, Transaction]:
    """Every case through one pipeline, CONCURRENCY sessions at a time."""
    pipe = pipeline(nameserver)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> Transaction:
        async with limit:
            return await run_case(pipe, case)

    done = await asyncio.gather(*(one(case) for case in cases))
    return {case.name: tx for case, tx in zip(cases, done, strict=True)}
