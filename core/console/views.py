"""What the console's pages show, read from the running node: the overview's counts and
chart, the quarantine and the queue (both in the store), and a message made safe to show."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.console.activity import BUCKET, Activity
from mailgate.quarantine import admin
from mailgate.quarantine.stored import StoredQuarantine
from mailgate.queue import admin as queue_admin
from mailgate.relay.settings import RelaySettings
from mailgate.store import Store
from mailgate.store.schema import (
    dmarc_evaluations,
    dmarc_received,
    dmarc_reports,
    messages,
    quarantine,
    recipients,
)

OUTCOME_COLOURS = {
    "accepted": "#2e7d32",
    "quarantined": "#f9a825",
    "discarded": "#8d6e63",
    "rejected": "#c62828",
    "tempfailed": "#ef6c00",
    "disconnected": "#6a1b9a",
    "aborted": "#9e9e9e",
}
MAX_LISTED = 200
MAX_SHOWN = 256 * 1024
"""Bytes of a message's text the console shows; the rest is cut with a note."""


@dataclass(slots=True)
class Overview:
    """The overview page's numbers and its chart (an SVG, drawn here: no script runs)."""

    outcomes: list[tuple[str, int]]
    verdicts: list[tuple[str, str, int]]
    chart: str
    held: int | None
    queued: int | None
    hours: float


async def overview(
    activity: Activity, held: QuarantineView | None, queue: QueueView | None
) -> Overview:
    outcomes, verdicts = activity.totals()
    held_count = await held.count() if held is not None else None
    queued_count = await queue.count() if queue is not None else None
    hours = (activity.buckets.maxlen or 0) * BUCKET / 3600
    return Overview(
        sorted(outcomes.items(), key=lambda kv: -kv[1]),
        sorted(((p, k, n) for (p, k), n in verdicts.items()), key=lambda t: -t[2]),
        chart(activity),
        held_count,
        queued_count,
        hours,
    )


def chart(activity: Activity, width: int = 720, height: int = 180) -> str:
    """Messages per outcome per five minutes, stacked bars, as an SVG document."""
    now = time.time()
    slots = activity.buckets.maxlen or 1
    first = now - now % BUCKET - (slots - 1) * BUCKET
    by_start = {b.start: b for b in activity.buckets}
    columns = [by_start.get(first + i * BUCKET) for i in range(slots)]
    peak = max((sum(b.outcomes.values()) for b in columns if b is not None), default=0) or 1
    bar = width / slots
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 20}" '
        f'role="img" aria-label="messages per outcome, last {slots * BUCKET / 3600:g} hours">',
        f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>',
    ]
    for i, bucket in enumerate(columns):
        if bucket is None:
            continue
        y = float(height)
        for outcome, colour in OUTCOME_COLOURS.items():
            n = bucket.outcomes.get(outcome, 0)
            if not n:
                continue
            h = n / peak * (height - 10)
            y -= h
            parts.append(
                f'<rect x="{i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{outcome}: {n}</title></rect>'
            )
    parts.append(
        f'<text x="0" y="{height + 15}" font-size="11">-{slots * BUCKET / 3600:g} h</text>'
    )
    parts.append(f'<text x="{width - 30}" y="{height + 15}" font-size="11">now</text>')
    parts.append(f'<text x="4" y="12" font-size="11">{peak} per 5 min</text>')
    parts.append("</svg>")
    return "".join(parts)


class QuarantineView:
    """The quarantine in the store, for the console: search, one message, release, delete."""

    def __init__(self, held: StoredQuarantine, relay: RelaySettings, queued: bool) -> None:
        self.held = held
        self.relay = relay
        self.queued = queued

    async def count(self) -> int:
        store = await self.held.open()
        async with store.engine.connect() as conn:
            q = select(func.count()).select_from(quarantine).where(quarantine.c.released.is_(None))
            return int((await conn.execute(q)).scalar_one())

    async def search(self, text: str, state: str) -> list[admin.HeldMessage]:
        store = await self.held.open()
        filters = admin.Filters(state=state if state in ("held", "released") else "")
        query = filters.query(time.time())
        if text:
            like = f"%{text}%"
            query = query.where(
                or_(
                    quarantine.c.sender.ilike(like),
                    quarantine.c.recipients.ilike(like),
                    quarantine.c.subject.ilike(like),
                    quarantine.c.reason.ilike(like),
                    quarantine.c.plugin.ilike(like),
                )
            )
        async with store.engine.connect() as conn:
            rows = (await conn.execute(query.limit(MAX_LISTED))).all()
        return [admin.HeldMessage.of(r) for r in rows]

    async def one(self, held_id: str) -> admin.HeldMessage | None:
        store = await self.held.open()
        found = await admin.find(store, admin.Filters(ids=[held_id]))
        return found[0] if found else None

    async def act(self, action: str, held_id: str, login: str) -> str:
        store = await self.held.open()
        held = await self.one(held_id)
        if held is None:
            return f"{held_id}: no such held message"
        if action == "delete":
            await admin.remove(store, [held_id])
            return f"{held_id}: deleted"
        if action != "release":
            return f"{action}: not something the console does"
        if held.released is not None:
            return f"{held_id}: already released by {held.released_by}"
        if self.queued:
            released = await admin.queue_release(held, store, self.held.node)
        else:
            released = await admin.relay_release(held, self.relay)
        await admin.record_release(store, released, f"{login} (console)")
        state = "released" if released.accepted else "NOT released"
        return f"{held_id}: {state} via {released.way}: {released.summary}"


@dataclass(slots=True)
class QueuedRow:
    """One queued message as the queue page lists it."""

    id: str
    created: float
    sender: str
    size: int
    held: bool
    next_attempt: float | None
    recipients: list[tuple[str, str, str]] = field(default_factory=list)
    """(address, state, last reply)."""


class QueueView:
    """The queue in the store, for the console: list, retry now, hold, release, delete."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def count(self) -> int:
        async with self.store.engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
            )

    async def search(self, text: str) -> list[QueuedRow]:
        m = messages.c
        query = select(m.id, m.created, m.sender, m.size, m.held_since, m.next_attempt)
        query = query.order_by(m.created)
        if text:
            like = f"%{text}%"
            matching = select(recipients.c.message_id).where(recipients.c.address.ilike(like))
            query = query.where(or_(messages.c.sender.ilike(like), messages.c.id.in_(matching)))
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query.limit(MAX_LISTED))).all()
            found = {
                r.id: QueuedRow(
                    r.id, r.created, r.sender, r.size, r.held_since is not None, r.next_attempt
                )
                for r in rows
            }
            if found:
                rcpts = await conn.execute(
                    select(recipients.c.message_id, recipients.c.address, recipients.c.state,
                           recipients.c.last_reply)
                    .where(recipients.c.message_id.in_(list(found)))
                    .order_by(recipients.c.message_id, recipients.c.position)
                )  # fmt: skip
                for r in rcpts:
                    found[r.message_id].recipients.append((r.address, r.state, r.last_reply))
        return list(found.values())

    async def act(self, action: str, queue_id: str, login: str) -> str:
        """The queue command's own actions (`mailgate.queue.admin`) on one message: a message
        being delivered is not deleted, a released one keeps its retry time."""
        now = time.time()
        chosen = queue_admin.Filters(ids=(queue_id,))

        async def work(conn: AsyncConnection) -> queue_admin.Action:
            if action == "retry":
                return await queue_admin.retry(conn, chosen, now)
            if action == "hold":
                return await queue_admin.hold(conn, chosen, f"held by {login} (console)", now)
            if action == "release":
                return await queue_admin.release(conn, chosen, now)
            return await queue_admin.delete_messages(conn, chosen, now)

        if action not in ("retry", "hold", "release", "delete"):
            return f"{action}: not something the console does"
        done = await self.store.transaction(work)
        if done.changed:
            return f"{queue_id}: {action} done"
        why = done.skipped.get(queue_id, "no such queued message")
        return f"{queue_id}: {action} not done: {why}"


@dataclass(slots=True)
class DomainReport:
    """One policy domain's evaluations over the reports page's window."""

    domain: str
    messages: int
    passed: int

    @property
    def pass_rate(self) -> str:
        return f"{100 * self.passed / self.messages:.1f}%" if self.messages else "-"


class ReportsView:
    """The DMARC reports in the store, for the console: per domain, per source, and the
    reports sent and received."""

    def __init__(self, store: Store, days: float = 7.0) -> None:
        self.store = store
        self.days = days

    async def _open(self) -> Store:
        await self.store.open()
        return self.store

    async def domains(self) -> list[DomainReport]:
        store = await self._open()
        since = time.time() - self.days * 86400
        e = dmarc_evaluations
        count = func.count()
        query = (
            select(e.c.policy_domain, count, func.count().filter(e.c.result == "pass"))
            .where(e.c.recorded >= since)
            .group_by(e.c.policy_domain)
            .order_by(count.desc(), e.c.policy_domain)
            .limit(MAX_LISTED)
        )
        async with store.engine.connect() as conn:
            return [DomainReport(*row) for row in await conn.execute(query)]

    async def sources(self, domain: str) -> list[Any]:
        from mailgate.plugins.reports import records as report_records

        store = await self._open()
        async with store.engine.connect() as conn:
            found = await report_records.summary(conn, domain, time.time() - self.days * 86400)
        return list(found[:MAX_LISTED])

    async def reports(self) -> tuple[list[Any], list[Any]]:
        """The reports sent and received in the window, newest first."""
        store = await self._open()
        since = time.time() - self.days * 86400
        async with store.engine.connect() as conn:
            sent = await conn.execute(
                select(dmarc_reports).where(dmarc_reports.c.created >= since)
                .order_by(dmarc_reports.c.created.desc()).limit(MAX_LISTED)
            )  # fmt: skip
            received = await conn.execute(
                select(dmarc_received).where(dmarc_received.c.received >= since)
                .order_by(dmarc_received.c.received.desc()).limit(MAX_LISTED)
            )  # fmt: skip
            return list(sent), list(received)


@dataclass(slots=True)
class Rendering:
    """A message as the console shows it: its headers and its parts, all as plain text."""

    headers: list[tuple[str, str]]
    parts: list[tuple[str, str]]
    """(what the part is, its text)."""
    cut: bool


def safe_rendering(content: bytes) -> Rendering:
    """The message's headers and text, never its HTML: an HTML part is shown as its source,
    as text (the template escapes it; the page's policy runs no script either way)."""
    cut = len(content) > MAX_SHOWN
    parsed = message_from_bytes(content[:MAX_SHOWN], policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    headers = [(name, str(value)) for name, value in parsed.items()]
    parts: list[tuple[str, str]] = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        name = part.get_filename()
        if name or part.get_content_maintype() not in ("text",):
            size = len(part.get_payload(decode=True) or b"")
            parts.append((f"attachment {name or '(no name)'} ({kind}, {size} bytes)", ""))
            continue
        try:
            text = part.get_content()
        except (LookupError, ValueError):
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        label = "HTML part, shown as its source text" if kind == "text/html" else kind
        parts.append((label, str(text)))
    return Rendering(headers, parts, cut)
