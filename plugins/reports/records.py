"""The reports' rows in the store: one per evaluated message, one per report built.

`evaluation_row` turns a DMARC `Evaluation` into a row (on the hot path: no I/O, a few
dict and JSON operations). The other functions are the queries the reporting job, the
retention and ``mailgate reports`` run; each takes a connection of the caller's transaction.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, distinct, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.plugins.dmarc import Evaluation
from mailgate.store.schema import (
    dmarc_evaluations,
    dmarc_periods,
    dmarc_received,
    dmarc_reports,
)

SPF_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})


def evaluation_row(evaluation: Evaluation, now: float, period: int) -> dict[str, Any] | None:
    """The row for `evaluation`, recorded at `now`, in a report period of `period` seconds
    aligned to UTC midnight; None when no DMARC policy applied (nothing to report)."""
    policy = evaluation.policy_published
    if policy is None or evaluation.result not in ("pass", "fail"):
        return None
    begin = int(now) // period * period
    spf = evaluation.spf
    auth = {
        "dkim": [
            [s.domain, s.selector, s.result if s.result in DKIM_RESULTS else "none"]
            for s in evaluation.dkim
        ],
        "spf": None
        if spf is None
        else [spf.domain, spf.scope, spf.result if spf.result in SPF_RESULTS else "none"],
    }
    reasons = [[r.type, r.comment] for r in evaluation.reasons]
    return {
        "recorded": now,
        "period_begin": begin,
        "period_end": begin + period,
        "policy_domain": policy.domain,
        "header_from": evaluation.header_from,
        "envelope_from": evaluation.envelope_from,
        "source_ip": evaluation.source_ip,
        "result": evaluation.result,
        "disposition": evaluation.disposition,
        "dkim_aligned": evaluation.dkim_aligned,
        "spf_aligned": evaluation.spf_aligned,
        "reasons": json.dumps(reasons, separators=(",", ":")) if reasons else "",
        "auth_results": json.dumps(auth, separators=(",", ":")),
        "policy": _policy_json(
            policy.domain, policy.adkim, policy.aspf, policy.p, policy.sp, policy.pct, policy.fo
        ),
        "rua": ",".join(policy.rua),
    }


async def write_evaluations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` (one multi-row INSERT) and note their report periods (insert if
    missing: a handful of rows per batch, so the job never scans the evaluations)."""
    await conn.execute(dmarc_evaluations.insert(), rows)
    periods = {(r["policy_domain"], r["period_begin"]): r["period_end"] for r in rows if r["rua"]}
    if not periods:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = [
        {"domain": d, "period_begin": b, "period_end": e} for (d, b), e in sorted(periods.items())
    ]
    await conn.execute(dialect.insert(dmarc_periods).values(values).on_conflict_do_nothing())


@functools.lru_cache(maxsize=4096)
def _policy_json(domain: str, adkim: str, aspf: str, p: str, sp: str, pct: int, fo: str) -> str:
    """The ``policy`` column: the same few records over and over, so made once each."""
    policy = {"domain": domain, "adkim": adkim, "aspf": aspf, "p": p, "sp": sp, "pct": pct}
    return json.dumps({**policy, "fo": fo}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Period:
    """One domain's report period with evaluations in it."""

    domain: str
    begin: int
    end: int
    messages: int


async def pending(conn: AsyncConnection, before: float, domain: str = "") -> list[Period]:
    """The (domain, period) pairs ended before `before`, with evaluations to report (the
    domain published a rua) and no report yet, oldest first, with their message counts."""
    p, e = dmarc_periods, dmarc_evaluations
    sent = select(dmarc_reports.c.id).where(
        dmarc_reports.c.domain == p.c.domain, dmarc_reports.c.period_begin == p.c.period_begin
    )
    messages = (
        select(func.count())
        .where(e.c.policy_domain == p.c.domain, e.c.period_begin == p.c.period_begin)
        .scalar_subquery()
    )
    query = (
        select(p.c.domain, p.c.period_begin, p.c.period_end, messages)
        .where(p.c.period_end <= before, ~sent.exists())
        .order_by(p.c.period_begin, p.c.domain)
    )
    if domain:
        query = query.where(p.c.domain == domain)
    rows = await conn.execute(query)
    return [Period(r[0], r[1], r[2], r[3]) for r in rows if r[3]]


@dataclass(frozen=True, slots=True)
class Published:
    """What the domain published, as the newest evaluation of the period saw it."""

    policy: dict[str, Any]
    rua: list[str]


async def published(conn: AsyncConnection, period: Period) -> Published:
    """The policy and rua of the newest evaluation in `period`."""
    e = dmarc_evaluations
    row = (
        await conn.execute(
            select(e.c.policy, e.c.rua)
            .where(e.c.policy_domain == period.domain, e.c.period_begin == period.begin)
            .order_by(e.c.recorded.desc())
            .limit(1)
        )
    ).one()
    return Published(json.loads(row.policy), [u for u in row.rua.split(",") if u])


@dataclass(frozen=True, slots=True)
class Group:
    """Messages of one period that share a source and every result: one ``<record>``."""

    source_ip: str
    count: int
    disposition: str
    dkim_aligned: str
    spf_aligned: str
    reasons: list[list[str]]
    header_from: str
    envelope_from: str
    dkim: list[list[str]]
    spf: list[str] | None


GROUP_COLUMNS = (
    dmarc_evaluations.c.source_ip,
    dmarc_evaluations.c.disposition,
    dmarc_evaluations.c.dkim_aligned,
    dmarc_evaluations.c.spf_aligned,
    dmarc_evaluations.c.reasons,
    dmarc_evaluations.c.header_from,
    dmarc_evaluations.c.envelope_from,
    dmarc_evaluations.c.auth_results,
)


async def groups(conn: AsyncConnection, period: Period) -> AsyncIterator[Group]:
    """The period's evaluations counted per source and results, by source address.

    The database groups and counts; the rows are streamed, so memory holds one group at a
    time, however many evaluations the period has.
    """
    e = dmarc_evaluations
    query = (
        select(*GROUP_COLUMNS, func.count())
        .where(e.c.policy_domain == period.domain, e.c.period_begin == period.begin)
        .group_by(*GROUP_COLUMNS)
        .order_by(*GROUP_COLUMNS)
    )
    result = await conn.stream(query.execution_options(yield_per=1000))
    async for row in result:
        auth = json.loads(row.auth_results)
        yield Group(
            source_ip=row.source_ip,
            count=row[-1],
            disposition=row.disposition,
            dkim_aligned=row.dkim_aligned,
            spf_aligned=row.spf_aligned,
            reasons=json.loads(row.reasons) if row.reasons else [],
            header_from=row.header_from,
            envelope_from=row.envelope_from,
            dkim=auth["dkim"],
            spf=auth["spf"],
        )


async def delete_older_than(conn: AsyncConnection, cutoff: float) -> tuple[int, int]:
    """Delete evaluations recorded before `cutoff`, the reports of periods that ended before
    it (whose evaluations are gone too, so they cannot be sent again), and the reports
    received before it; the counts of the first two."""
    evaluations = await conn.execute(
        delete(dmarc_evaluations).where(dmarc_evaluations.c.recorded < cutoff)
    )
    reports = await conn.execute(delete(dmarc_reports).where(dmarc_reports.c.period_end < cutoff))
    await conn.execute(delete(dmarc_periods).where(dmarc_periods.c.period_end < cutoff))
    await conn.execute(delete(dmarc_received).where(dmarc_received.c.received < cutoff))
    return evaluations.rowcount, reports.rowcount


@dataclass(frozen=True, slots=True)
class SourceSummary:
    """How one source's mail for a domain fared."""

    source_ip: str
    messages: int
    passed: int
    dkim_aligned: int
    spf_aligned: int


async def summary(conn: AsyncConnection, domain: str, since: float) -> list[SourceSummary]:
    """Per source address, the mail from `domain` (header From, or its policy domain) since
    `since`: messages, DMARC passes, aligned DKIM and SPF passes; busiest source first."""
    e = dmarc_evaluations
    count = func.count()
    rows = await conn.execute(
        select(
            e.c.source_ip,
            count,
            func.count().filter(e.c.result == "pass"),
            func.count().filter(e.c.dkim_aligned == "pass"),
            func.count().filter(e.c.spf_aligned == "pass"),
        )
        .where((e.c.policy_domain == domain) | (e.c.header_from == domain), e.c.recorded >= since)
        .group_by(e.c.source_ip)
        .order_by(count.desc(), e.c.source_ip)
    )
    return [SourceSummary(*r) for r in rows]


async def evaluated_domains(conn: AsyncConnection) -> int:
    """How many policy domains have evaluations stored."""
    found = await conn.execute(select(func.count(distinct(dmarc_evaluations.c.policy_domain))))
    return int(found.scalar_one())
