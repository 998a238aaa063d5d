"""Operating the queue: find messages by envelope, age and state, and act on them.

What ``mailgate queue`` runs, straight against the store (SQLite or PostgreSQL), so it works
whether a node is running or not. A running node's worker sees each change at its next look
for due messages (``poll_interval``, or at once when woken with SIGUSR1).

- `Filters` say which messages: queue ids, sender, recipient, recipient domain, age, state.
- `list_messages` and `find_message` read; `retry`, `hold`, `release` and `delete` write, each
  in one transaction, and say what they did in an `Action`.

A message's **state**, as the listing and the metrics show it: ``held`` when it is on hold
(whatever its recipients); otherwise ``deferred`` when a recipient was tried and is waiting
for a retry, else ``pending`` when a recipient was not tried yet, else ``bounced`` (nothing
left to try; such a message normally leaves the store with its DSN). Selecting by state
(``--state``) is broader for the recipient states: a message not held with at least one
recipient in that state. A message is **in flight** while a node holds a live lease on it
(it is being delivered now).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.store import like_literal
from mailgate.store.schema import BOUNCED, DEFERRED, PENDING, UNDELIVERED, messages, recipients

HELD = "held"
STATES = (PENDING, DEFERRED, BOUNCED, HELD)
"""The states a message can be selected by (see the module docstring)."""

_CHUNK = 500
"""Queue ids per ``IN (...)`` list: SQLite limits the parameters of one statement."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which messages a command applies to: all of the given conditions hold (none: every
    message). Addresses and domains compare without regard to case."""

    ids: tuple[str, ...] = ()
    """Queue ids (any of them); each may be a unique prefix of one."""
    sender: str | None = None
    """The envelope sender, exactly (``""`` for the null sender ``<>``)."""
    recipient: str | None = None
    """A recipient, exactly."""
    domain: str | None = None
    """A recipient's domain."""
    older_than: float | None = None
    """Seconds: accepted at least this long ago."""
    newer_than: float | None = None
    """Seconds: accepted less than this long ago."""
    state: str | None = None
    """``held``: on hold; ``pending``, ``deferred``, ``bounced``: not held, with a recipient
    in that state."""

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state: expected one of {', '.join(STATES)}")

    @property
    def everything(self) -> bool:
        """True when no condition is given."""
        return not self.ids and all(
            v is None
            for v in (
                self.sender,
                self.recipient,
                self.domain,
                self.older_than,
                self.newer_than,
                self.state,
            )
        )


@dataclass(slots=True)
class RecipientView:
    """One recipient of a queued message, as the store has it."""

    address: str
    state: str
    attempts: int
    next_attempt: float | None
    last_reply: str
    remote_mta: str | None
    updated: float

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (times as seconds since the epoch)."""
        return {
            "address": self.address,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_reply": self.last_reply,
            "remote_mta": self.remote_mta,
            "updated": self.updated,
        }


@dataclass(slots=True)
class MessageView:
    """One queued message (without its content) and its recipients."""

    id: str
    created: float
    node: str
    transaction: str
    sender: str
    sender_params: list[str]
    envid: str | None
    ret: str | None
    size: int
    header_size: int
    next_attempt: float | None
    lease_owner: str | None
    lease_until: float | None
    held_since: float | None
    held_reason: str | None
    recipients: list[RecipientView] = field(default_factory=list)

    def in_flight(self, now: float) -> bool:
        """True while a node holds a live lease on it (delivering it now)."""
        return self.lease_until is not None and self.lease_until >= now

    @property
    def state(self) -> str:
        """The message's state (see the module docstring)."""
        if self.held_since is not None:
            return HELD
        states = {r.state for r in self.recipients}
        for state in (DEFERRED, PENDING, BOUNCED):
            if state in states:
                return state
        return PENDING

    def to_json(self, now: float) -> dict[str, object]:
        """A JSON-ready dict (times as seconds since the epoch, and the age in seconds)."""
        return {
            "id": self.id,
            "state": self.state,
            "created": self.created,
            "age": round(now - self.created, 3),
            "size": self.size,
            "sender": self.sender,
            "sender_params": self.sender_params,
            "envid": self.envid,
            "ret": self.ret,
            "node": self.node,
            "transaction": self.transaction,
            "next_attempt": self.next_attempt,
            "held_since": self.held_since,
            "held_reason": self.held_reason,
            "in_flight": self.in_flight(now),
            "lease_owner": self.lease_owner if self.in_flight(now) else None,
            "lease_until": self.lease_until if self.in_flight(now) else None,
            "recipients": [r.to_json() for r in self.recipients],
        }


@dataclass(slots=True)
class Action:
    """What a write command did: the messages it matched, those it changed, those it left."""

    name: str
    matched: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Queue id: why it was left alone (in flight, already held, nothing left to try)."""
    notes: dict[str, str] = field(default_factory=dict)
    """Queue id: what to know about a change (held while in flight)."""

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "action": self.name,
            "matched": self.matched,
            "changed": self.changed,
            "skipped": self.skipped,
            "notes": self.notes,
        }


# -- selecting ------------------------------------------------------------------------------------


def _has_recipient(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(recipients.c.message_id == messages.c.id, *conditions)


def _state_condition(state: str) -> ColumnElement[bool]:
    if state == HELD:
        return messages.c.held_since.is_not(None)
    return and_(messages.c.held_since.is_(None), _has_recipient(recipients.c.state == state))


def _conditions(filters: Filters, now: float) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.ids:
        conditions.append(
            or_(
                *(
                    messages.c.id.like(like_literal(i.upper()) + "%", escape="\\")
                    for i in filters.ids
                )
            )
        )
    if filters.sender is not None:
        conditions.append(func.lower(messages.c.sender) == filters.sender.lower())
    if filters.recipient is not None:
        address = func.lower(recipients.c.address)
        conditions.append(_has_recipient(address == filters.recipient.lower()))
    if filters.domain is not None:
        domain = "%@" + like_literal(filters.domain.lower().strip(".").lstrip("@"))
        conditions.append(
            _has_recipient(func.lower(recipients.c.address).like(domain, escape="\\"))
        )
    if filters.older_than is not None:
        conditions.append(messages.c.created <= now - filters.older_than)
    if filters.newer_than is not None:
        conditions.append(messages.c.created > now - filters.newer_than)
    if filters.state is not None:
        conditions.append(_state_condition(filters.state))
    return conditions


async def matching_ids(conn: AsyncConnection, filters: Filters, now: float) -> list[str]:
    """The queue ids of the messages `filters` select, oldest first."""
    query = (
        select(messages.c.id)
        .where(*_conditions(filters, now))
        .order_by(messages.c.created, messages.c.id)
    )
    return list((await conn.execute(query)).scalars())


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])


_COLUMNS = [c for c in messages.c if c.name not in ("content", "delay_warned")]


async def _views(conn: AsyncConnection, ids: Sequence[str]) -> list[MessageView]:
    found: dict[str, MessageView] = {}
    for chunk in _chunks(ids):
        rows = await conn.execute(select(*_COLUMNS).where(messages.c.id.in_(chunk)))
        for row in rows:
            found[row.id] = MessageView(
                id=row.id,
                created=row.created,
                node=row.node,
                transaction=row.transaction,
                sender=row.sender,
                sender_params=json.loads(row.sender_params),
                envid=row.envid,
                ret=row.ret,
                size=row.size,
                header_size=row.header_size,
                next_attempt=row.next_attempt,
                lease_owner=row.lease_owner,
                lease_until=row.lease_until,
                held_since=row.held_since,
                held_reason=row.held_reason,
            )
        rcpts = await conn.execute(
            select(recipients)
            .where(recipients.c.message_id.in_(chunk))
            .order_by(recipients.c.message_id, recipients.c.position)
        )
        for r in rcpts:
            found[r.message_id].recipients.append(
                RecipientView(
                    r.address,
                    r.state,
                    r.attempts,
                    r.next_attempt,
                    r.last_reply,
                    r.remote_mta,
                    r.updated,
                )
            )
    return [found[i] for i in ids if i in found]


async def list_messages(conn: AsyncConnection, filters: Filters, now: float) -> list[MessageView]:
    """The messages `filters` select, oldest first, with their recipients."""
    return await _views(conn, await matching_ids(conn, filters, now))


class Ambiguous(LookupError):
    """A queue id prefix that names more than one message."""


async def find_message(conn: AsyncConnection, queue_id: str) -> tuple[MessageView, bytes] | None:
    """The message `queue_id` (or a unique prefix of it) and its content; None if not queued.

    Raises `Ambiguous` for a prefix of several."""
    ids = await matching_ids(conn, Filters(ids=(queue_id,)), time.time())
    exact = [i for i in ids if i == queue_id.upper()]
    if len(ids) > 1 and not exact:
        raise Ambiguous(f"{queue_id} names {len(ids)} messages: {', '.join(ids[:5])}")
    if not ids:
        return None
    (view,) = await _views(conn, exact or ids)
    content = (
        await conn.execute(select(messages.c.content).where(messages.c.id == view.id))
    ).scalar_one()
    return view, bytes(content)


# -- acting ---------------------------------------------------------------------------------------


async def retry(conn: AsyncConnection, filters: Filters, now: float) -> Action:
    """Make the selected messages due now: every recipient not delivered or bounced is tried
    at the next look. A held message stays held (it is tried once released); one with only
    bounced recipients has nothing to try."""
    action = Action("retry", await matching_ids(conn, filters, now))
    waiting = _has_recipient(recipients.c.state.in_(UNDELIVERED))
    for chunk in _chunks(action.matched):
        await conn.execute(
            update(recipients)
            .where(recipients.c.message_id.in_(chunk), recipients.c.state.in_(UNDELIVERED))
            .values(next_attempt=now)
        )
        rows = await conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), waiting)
            .values(next_attempt=now)
            .returning(messages.c.id, messages.c.held_since)
        )
        for row in rows:
            if row.held_since is not None:
                action.skipped[row.id] = "held: due once released"
            else:
                action.changed.append(row.id)
    for queue_id in action.matched:
        if queue_id not in action.changed and queue_id not in action.skipped:
            action.skipped[queue_id] = "nothing left to try (bounced recipients only)"
    return action


async def hold(conn: AsyncConnection, filters: Filters, reason: str, now: float) -> Action:
    """Put the selected messages on hold: no node claims them until they are released. A
    message in flight is held from its next attempt on (the one under way finishes)."""
    action = Action("hold", await matching_ids(conn, filters, now))
    for chunk in _chunks(action.matched):
        rows = await conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), messages.c.held_since.is_(None))
            .values(held_since=now, held_reason=reason)
            .returning(messages.c.id, messages.c.lease_until)
        )
        for row in rows:
            action.changed.append(row.id)
            if row.lease_until is not None and row.lease_until >= now:
                action.notes[row.id] = "in flight: held from its next attempt on"
    for queue_id in action.matched:
        if queue_id not in action.changed:
            action.skipped[queue_id] = "already held"
    return action


async def release(conn: AsyncConnection, filters: Filters, now: float) -> Action:
    """Take the selected messages off hold; each is tried at its own retry time (at once if
    that time passed while it was held)."""
    action = Action("release", await matching_ids(conn, filters, now))
    for chunk in _chunks(action.matched):
        rows = await conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), messages.c.held_since.is_not(None))
            .values(held_since=None, held_reason=None)
            .returning(messages.c.id)
        )
        action.changed += list(rows.scalars())
    for queue_id in action.matched:
        if queue_id not in action.changed:
            action.skipped[queue_id] = "not held"
    return action


async def delete_messages(
    conn: AsyncConnection, filters: Filters, now: float, *, force: bool = False
) -> Action:
    """Remove the selected messages and their recipients. A message in flight (a live lease)
    is left alone unless `force`: its delivery would go on with the message gone from under
    it (and the next hop may have it already)."""
    action = Action("delete", await matching_ids(conn, filters, now))
    live = and_(messages.c.lease_until.is_not(None), messages.c.lease_until >= now)
    for chunk in _chunks(action.matched):
        query = delete(messages).where(messages.c.id.in_(chunk))
        if not force:
            query = query.where(~live)
        rows = await conn.execute(query.returning(messages.c.id))
        action.changed += list(rows.scalars())
    for queue_id in action.matched:
        if queue_id not in action.changed:
            action.skipped[queue_id] = "in flight (being delivered now); --force deletes it"
    return action


# -- counting (for metrics and the listing's summary) ---------------------------------------------


@dataclass(slots=True)
class Depth:
    """How much is queued: messages by state, recipients by state, the oldest message."""

    messages: dict[str, int]
    recipients: dict[str, int]
    in_flight: int
    oldest: float | None
    """When the oldest message was accepted (seconds since the epoch); None: queue empty."""
    size: int


async def depth(conn: AsyncConnection, now: float) -> Depth:
    """Count the queue in three aggregate queries (no row is loaded)."""
    held = messages.c.held_since.is_not(None)
    deferred = _has_recipient(recipients.c.state == DEFERRED)
    pending = _has_recipient(recipients.c.state == PENDING)
    state = case((held, HELD), (deferred, DEFERRED), (pending, PENDING), else_=BOUNCED).label(
        "state"
    )
    by_state = await conn.execute(select(state, func.count()).group_by(state))
    counts = {s: 0 for s in STATES}
    counts.update({row[0]: row[1] for row in by_state})
    rcpt_rows = await conn.execute(
        select(recipients.c.state, func.count())
        .where(recipients.c.state.in_((PENDING, DEFERRED, BOUNCED)))
        .group_by(recipients.c.state)
    )
    rcpts = {s: 0 for s in (PENDING, DEFERRED, BOUNCED)}
    rcpts.update({row[0]: row[1] for row in rcpt_rows})
    live = and_(messages.c.lease_until.is_not(None), messages.c.lease_until >= now)
    oldest, size, in_flight = (
        await conn.execute(
            select(
                func.min(messages.c.created),
                func.coalesce(func.sum(messages.c.size), 0),
                func.count().filter(live),
            )
        )
    ).one()
    return Depth(counts, rcpts, in_flight, oldest, int(size))
