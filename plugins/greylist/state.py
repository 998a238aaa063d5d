"""Where greylisting keeps its state: the `GreylistState` seam and the store's implementation.

`check` decides one attempt and records it in one step, so two nodes sharing the state see
one history. In the store, that step is one transaction through the store's `GroupCommit`
(concurrent attempts share a commit); expired rows are deleted every ``cleanup_interval``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.logging import get_logger
from mailgate.plugins.greylist.triplet import Decision, Timing, Triplet, TripletState, decide
from mailgate.plugins.greylist.triplet import whitelisted as is_whitelisted
from mailgate.plugins.limits.loop_resources import close_with_loop
from mailgate.store import GroupCommit, Store, StoreSettings
from mailgate.store.schema import greylist_clients, greylist_triplets

log = get_logger("mailgate.plugins.greylist")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer for one attempt."""

    allowed: bool
    wait: int = 0
    """Seconds until a retry can pass (when refused)."""
    whitelisted: bool = False
    """The client network is whitelisted automatically (no triplet was looked at)."""
    first_pass: bool = False
    """This attempt is the retry that got the triplet through."""


class GreylistState(Protocol):
    """The state of every triplet and client network, shared by the nodes that use it."""

    async def check(self, triplet: Triplet, count_pass: bool) -> Outcome:
        """Decide this attempt and record it; with `count_pass`, a pass counts towards the
        client network's automatic whitelisting."""
        ...


@dataclass(frozen=True, slots=True)
class Policy:
    """What the state needs of the settings."""

    timing: Timing
    auto_whitelist: int
    cleanup_interval: float = 3600.0


def outcome_of(decision: Decision, before: TripletState | None) -> Outcome:
    """The `Outcome` of a triplet decision (`before`: the state it was made on)."""
    first_pass = decision.allowed and (before is None or before.passed is None)
    return Outcome(decision.allowed, decision.wait, False, first_pass)


_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]]
_stores = weakref.WeakKeyDictionary()


async def _shared_writer(settings: StoreSettings) -> GroupCommit:
    """The store at `settings.url`, opened (and migrated) once per loop, with its writer."""
    opened = _stores.setdefault(asyncio.get_running_loop(), {})
    entry = opened.get(settings.url)
    if entry is None:
        entry = opened[settings.url] = asyncio.ensure_future(_open(settings, opened))
    try:
        writer: GroupCommit = await asyncio.shield(entry)
    except BaseException:
        if entry.done():
            opened.pop(settings.url, None)  # a failed open is tried again next time
        raise
    return writer


async def _open(settings: StoreSettings, opened: dict[str, Any]) -> GroupCommit:
    store = Store(settings)
    await store.open()
    writer = GroupCommit(store)
    writer.start()

    async def close() -> None:
        opened.pop(settings.url, None)
        try:
            await writer.stop()  # at the loop's end its task may be cancelled already
        except (Exception, asyncio.CancelledError) as exc:
            log.debug("greylist store writer stopped", error=str(exc) or type(exc).__name__)
        finally:
            await store.close()

    close_with_loop(f"store {settings.redacted()}", close)
    return writer


class StoreState:
    """`GreylistState` in the store's tables ``greylist_triplets`` and ``greylist_clients``."""

    def __init__(
        self, settings: StoreSettings, policy: Policy, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.clock = clock
        self._next_cleanup = 0.0

    async def check(self, triplet: Triplet, count_pass: bool) -> Outcome:
        """See `GreylistState.check`."""
        writer = await _shared_writer(self.settings)
        now = self.clock()
        cleanup = now >= self._next_cleanup
        if cleanup:
            self._next_cleanup = now + self.policy.cleanup_interval
        return await writer.write(lambda conn: self._check(conn, triplet, count_pass, now, cleanup))

    async def _check(
        self, conn: AsyncConnection, triplet: Triplet, count_pass: bool, now: float, cleanup: bool
    ) -> Outcome:
        if cleanup:
            await self._delete_expired(conn, now)
        policy = self.policy
        outcome: Outcome | None = None
        if policy.auto_whitelist:
            row = (
                await conn.execute(
                    select(greylist_clients.c.passes, greylist_clients.c.last_seen).where(
                        greylist_clients.c.client == triplet.client
                    )
                )
            ).first()
            lifetime = policy.timing.pass_lifetime
            if row is not None and is_whitelisted(
                row.passes, row.last_seen, now, policy.auto_whitelist, lifetime
            ):
                outcome = Outcome(True, whitelisted=True)
        if outcome is None:
            outcome = await self._check_triplet(conn, triplet, now)
        if outcome.allowed and count_pass and policy.auto_whitelist:
            await self._count_pass(conn, triplet.client, now)
        return outcome

    async def _check_triplet(self, conn: AsyncConnection, triplet: Triplet, now: float) -> Outcome:
        t = greylist_triplets.c
        row = (
            await conn.execute(
                select(t.first_seen, t.last_seen, t.passed, t.attempts).where(t.key == triplet.key)
            )
        ).first()
        before = None if row is None else TripletState(*row)
        decision = decide(before, now, self.policy.timing)
        values = {
            "first_seen": decision.state.first_seen,
            "last_seen": decision.state.last_seen,
            "passed": decision.state.passed,
            "attempts": decision.state.attempts,
        }
        if row is None:
            new = {"key": triplet.key, "client": triplet.client, "sender": triplet.sender}
            insert = _insert(conn)(greylist_triplets).values(
                **new, recipient=triplet.recipient, **values
            )
            await conn.execute(insert.on_conflict_do_nothing(index_elements=["key"]))
        else:
            await conn.execute(update(greylist_triplets).where(t.key == triplet.key).values(values))
        return outcome_of(decision, before)

    @staticmethod
    async def _count_pass(conn: AsyncConnection, client: str, now: float) -> None:
        c = greylist_clients.c
        insert = _insert(conn)(greylist_clients).values(client=client, passes=1, last_seen=now)
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=["client"], set_={"passes": c.passes + 1, "last_seen": now}
            )
        )

    async def _delete_expired(self, conn: AsyncConnection, now: float) -> None:
        timing = self.policy.timing
        t = greylist_triplets.c
        await conn.execute(
            delete(greylist_triplets).where(
                (t.last_seen < now - timing.pass_lifetime)
                | (t.passed.is_(None) & (t.first_seen < now - timing.retry_window))
            )
        )
        c = greylist_clients.c
        await conn.execute(delete(greylist_clients).where(c.last_seen < now - timing.pass_lifetime))


def _insert(conn: AsyncConnection) -> Any:
    """The dialect's INSERT (for ON CONFLICT): SQLite's or PostgreSQL's."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
