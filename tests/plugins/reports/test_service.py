"""The reporting service against the store: once-only sending across nodes, retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Table, func, select

from mailgate.plugins.dmarc.evaluation import Evaluation, PolicyPublished, SpfIdentity
from mailgate.plugins.reports import ReportingService, ReportsSettings
from mailgate.plugins.reports.records import evaluation_row
from mailgate.store import StoreSettings
from mailgate.store.schema import dmarc_evaluations, dmarc_reports, messages

DAY = 86400
SETTINGS = ReportsSettings(
    org_name="Test", contact="postmaster@mx.test", sender="reports@mx.test", submitter="mx.test"
)

ServiceFactory = Callable[[str], ReportingService]


@pytest.fixture
async def services(store_url: str) -> AsyncIterator[Callable[[str], ReportingService]]:
    """``services(node)``: an open `ReportingService` on the test's store (no loops running)."""
    made: list[ReportingService] = []

    def factory(node: str) -> ReportingService:
        service = ReportingService(SETTINGS, StoreSettings(url=store_url), node)
        made.append(service)
        return service

    yield factory
    for service in made:
        await service.stop()


def evaluation(domain: str, ip: str, passed: bool) -> Evaluation:
    published = PolicyPublished(
        domain, "r", "r", "none", "none", 100, None, False, rua=(f"mailto:dmarc@{domain}",)
    )
    return Evaluation(
        source_ip=ip,
        header_from=domain,
        envelope_from=domain if passed else "other.example",
        spf=SpfIdentity(domain, "mfrom", "pass" if passed else "fail"),
        dkim=[],
        result="pass" if passed else "fail",
        policy_published=published,
        spf_aligned="pass" if passed else "fail",
    )


async def record(service: ReportingService, when: float, *rows: tuple[str, str, bool]) -> None:
    for domain, ip, passed in rows:
        row = evaluation_row(evaluation(domain, ip, passed), when, DAY)
        assert row is not None
        service.record(row)
    assert await service.flush() == len(rows)


async def count(service: ReportingService, table: Table) -> int:
    async with service.store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


@pytest.mark.parametrize(
    "store_url", [pytest.param("postgresql", marks=pytest.mark.peer)], indirect=True
)
async def test_two_nodes_on_one_postgresql_send_each_report_once(
    services: ServiceFactory,
) -> None:
    one, two = services("node-1"), services("node-2")
    await one.open()
    await two.open()
    yesterday = time.time() - DAY
    domains = [f"d{i}.example" for i in range(20)]
    await record(one, yesterday, *[(d, "192.0.2.1", True) for d in domains])
    await record(two, yesterday, *[(d, "192.0.2.2", False) for d in domains])

    now = time.time() + DAY
    first, second = await asyncio.gather(one.send_due(now), two.send_due(now))
    states = [o.state for o in first + second]
    assert states.count("sent") == len(domains)
    assert set(states) <= {"sent", "already sent"}
    assert await count(one, dmarc_reports) == len(domains)
    assert await count(one, messages) == len(domains)  # one report mail per domain
    sent = [o for o in first + second if o.state == "sent"]
    assert {o.messages for o in sent} == {2}  # both nodes' evaluations in each report


async def test_the_unique_key_refuses_a_second_report_for_a_period(
    services: ServiceFactory,
) -> None:
    one, two = services("node-1"), services("node-2")
    await one.open()
    await two.open()
    await record(one, time.time() - DAY, ("a.example", "192.0.2.1", True))
    [period] = await one.pending(time.time() + DAY)
    assert (await one.report(period)).state == "sent"
    assert (await two.report(period)).state == "already sent"
    assert await count(one, messages) == 1
    assert await one.pending(time.time() + DAY) == []


async def test_a_period_is_reported_only_after_it_ended_and_the_delay(
    services: ServiceFactory,
) -> None:
    service = services("node")
    await service.open()
    now = time.time()
    await record(service, now, ("a.example", "192.0.2.1", True))
    assert await service.pending(now) == []
    end = (int(now) // DAY + 1) * DAY
    assert await service.pending(end + SETTINGS.send_delay - 1) == []
    [period] = await service.pending(end + SETTINGS.send_delay)
    assert (period.begin, period.end, period.messages) == (end - DAY, end, 1)


async def test_dry_run_builds_but_queues_and_records_nothing(services: ServiceFactory) -> None:
    service = services("node")
    await service.open()
    await record(service, time.time() - DAY, ("a.example", "192.0.2.1", True))
    [outcome] = await service.send_due(time.time() + DAY, dry_run=True)
    assert outcome.state == "dry run" and outcome.messages == 1 and outcome.xml
    assert await count(service, messages) == 0
    assert await count(service, dmarc_reports) == 0


async def test_retention_deletes_old_evaluations_and_reports(services: ServiceFactory) -> None:
    service = services("node")
    await service.open()
    old = time.time() - 40 * DAY
    await record(service, old, ("a.example", "192.0.2.1", True))
    await record(service, time.time(), ("a.example", "192.0.2.1", True))
    await service.send_due(old + 2 * DAY)
    assert await count(service, dmarc_reports) == 1
    deleted = await service.expire(time.time() + 11 * DAY)  # 30 days of retention
    assert deleted == (1, 1)
    assert await count(service, dmarc_evaluations) == 1


async def test_a_full_buffer_drops_evaluations_not_mail(store_url: str) -> None:
    small = ReportsSettings(org_name="T", contact="p@mx.test", sender="r@mx.test", max_buffered=2)
    service = ReportingService(small, StoreSettings(url=store_url), "node")
    row = evaluation_row(evaluation("a.example", "192.0.2.1", True), time.time(), DAY)
    assert row is not None
    for _ in range(5):
        service.record(dict(row))
    assert service.metrics.dropped._value.get() == 3
