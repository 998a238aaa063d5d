"""The ``limits`` plugin: rates, concurrent connections and sizes, per key, by rule.

Each ``[[limit]]`` rule counts one thing (`what`) per value of its `key` expression, at the
stage where that thing happens, and refuses past `max` with the standard reply:

==============  ===========  ================================================================
what            counted at   refusal
==============  ===========  ================================================================
connections     connect      ``421 4.7.0`` and the connection is closed
concurrent      connect      ``421 4.7.0`` (the slot is given back at disconnect)
messages        MAIL FROM    ``450 4.7.1``
recipients      RCPT TO      ``450 4.7.1``; per message (``window = 0``): ``452 4.5.3``
bytes           end of data  ``451 4.7.1`` (at MAIL FROM already once the window is used
                             up, or when the SIZE announced would not fit in it);
                             one message (``window = 0``): ``552 5.3.4``, at MAIL FROM already
                             when the client announced a SIZE past it
==============  ===========  ================================================================

Counters live in this process's memory (under workers: the master's, one table for the
node, see `mailgate.plugins.limits.node_counters`), or in Redis (``redis = "redis://..."``)
when several nodes must count together. When Redis cannot be reached the hook raises, and the
plugin's ``on_error`` applies (``tempfail`` by default: 421 at connect, 451 later).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import weakref
from collections.abc import Callable, Iterable

from mailgate.logging import get_logger
from mailgate.message import Message
from mailgate.plugin import hookimpl
from mailgate.plugins.limits.counters import Counters, Hit, MemoryCounters
from mailgate.plugins.limits.node_counters import ENVIRONMENT as NODE_COUNTERS
from mailgate.plugins.limits.node_counters import NodeCounters
from mailgate.plugins.limits.redis_client import require_redis
from mailgate.plugins.limits.redis_counters import RedisCounters
from mailgate.plugins.limits.settings import LimitRule, LimitsSettings
from mailgate.session import Address, Session, Transaction
from mailgate.syntax import ascii_number
from mailgate.verdict import Verdict

log = get_logger("mailgate.plugins.limits")

SLOTS_NOTE = "limits.slots"
"""``session.notes[SLOTS_NOTE]``: the concurrent slots this session holds, released at the end."""

_NODE = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
"""This process, in the tokens of the concurrent slots it holds in Redis."""

_memory: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, bool], Counters]]
_memory = weakref.WeakKeyDictionary()
"""The in-memory counters of each loop: a reload (new plugin instances) keeps the counts.
Under workers (``$MAILGATE_NODE_COUNTERS`` set) they are the master's, shared by the node."""


class Limits:
    """Counts and refuses per the ``[[limit]]`` rules (see the module docstring)."""

    Settings = LimitsSettings
    reads: frozenset[str] = frozenset()
    """Only the message's size is read: the milter listener need not send the content."""

    def __init__(self, settings: LimitsSettings | None = None) -> None:
        self.settings = s = settings or LimitsSettings()
        self._redis: RedisCounters | None = None
        if s.redis:
            require_redis()
            self._redis = RedisCounters(
                s.redis,
                timeout=s.redis_timeout,
                connections=s.redis_connections,
                prefix=s.key_prefix,
                sliding=s.sliding,
                session_lifetime=s.session_lifetime,
            )
        self._at_connect = [r for r in s.limit if r.what in ("connections", "concurrent")]
        self._at_mail = [r for r in s.limit if r.what in ("messages", "bytes")]
        self._at_rcpt = [r for r in s.limit if r.what == "recipients"]
        self._at_data = [r for r in s.limit if r.what == "bytes"]

    def counters(self) -> Counters:
        """Where the counts are kept: Redis, or this loop's memory table."""
        if self._redis is not None:
            return self._redis
        tables = _memory.setdefault(asyncio.get_running_loop(), {})
        shape = (self.settings.max_keys, self.settings.sliding)
        table: Counters | None = tables.get(shape)
        if table is None:
            node = os.environ.get(NODE_COUNTERS, "")
            table = tables[shape] = (
                NodeCounters(node, shape[0], shape[1])
                if node
                else MemoryCounters(shape[0], sliding=shape[1])
            )
        return table

    # -- hooks --------------------------------------------------------------------------------

    @hookimpl
    async def on_connect(self, session: Session) -> Verdict | None:
        """Count the connection; take a concurrent slot."""
        counters = self.counters()
        for rule, key in self._applying(self._at_connect, session, None):
            limit = rule.max.value(session, None)
            if rule.what == "concurrent":
                token = f"{_NODE}:{session.id}"
                hit = await counters.acquire(rule.name, key, token, limit)
                if hit.allowed:
                    session.notes.setdefault(SLOTS_NOTE, []).append((counters, rule.name, key))
            else:
                hit = await counters.add(rule.name, key, 1, limit, rule.window)
            if not hit.allowed:
                text = f"Too many connections from {key}, try again later"
                return self._refuse(rule, key, hit, limit, Verdict.tempfail, 421, "4.7.0", text)
        return None

    @hookimpl
    async def on_mail(
        self, session: Session, transaction: Transaction, sender: Address
    ) -> Verdict | None:
        """Count the message; refuse a SIZE past a size limit or what is left of a byte quota."""
        counters = self.counters()
        for rule, key in self._applying(self._at_mail, session, transaction):
            limit = rule.max.value(session, transaction)
            verdict = await self._at_mail_from(counters, rule, key, limit, sender)
            if verdict is not None:
                return verdict
        return None

    async def _at_mail_from(
        self, counters: Counters, rule: LimitRule, key: str, limit: int, sender: Address
    ) -> Verdict | None:
        size = _announced_size(sender)
        if rule.what == "messages":
            hit = await counters.add(rule.name, key, 1, limit, rule.window)
            text = "Message rate limit exceeded, try again later"
            make, code, status = Verdict.tempfail, 450, "4.7.1"
        elif rule.per_message:
            hit = Hit(size <= limit, size)
            text = "Message size exceeds the limit"
            make, code, status = Verdict.reject, 552, "5.3.4"
        else:
            seen = await counters.add(rule.name, key, 0, limit, rule.window)
            hit = Hit(seen.allowed and seen.count + size <= limit, seen.count)
            text = "Data rate limit exceeded, try again later"
            make, code, status = Verdict.tempfail, 451, "4.7.1"
        if hit.allowed:
            return None
        return self._refuse(rule, key, hit, limit, make, code, status, text)

    @hookimpl
    async def on_rcpt(self, session: Session, transaction: Transaction) -> Verdict | None:
        """Count the recipient; refuse past a per-message or per-window limit."""
        counters = self.counters()
        for rule, key in self._applying(self._at_rcpt, session, transaction):
            limit = rule.max.value(session, transaction)
            if rule.per_message:
                count = len(transaction.recipients)
                if count + 1 > limit:
                    hit = Hit(False, count)
                    return self._refuse(
                        rule, key, hit, limit, Verdict.tempfail, 452, "4.5.3", "Too many recipients"
                    )
                continue
            hit = await counters.add(rule.name, key, 1, limit, rule.window)
            if not hit.allowed:
                text = "Recipient rate limit exceeded, try again later"
                return self._refuse(rule, key, hit, limit, Verdict.tempfail, 450, "4.7.1", text)
        return None

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> Verdict | None:
        """Count the message's bytes; refuse one past a size limit or the window's quota."""
        counters = self.counters()
        size = message.size if not message.withheld else _announced_size(transaction.sender)
        for rule, key in self._applying(self._at_data, session, transaction):
            limit = rule.max.value(session, transaction)
            if rule.per_message:
                if size > limit:
                    text = "Message size exceeds the limit"
                    hit = Hit(False, size)
                    return self._refuse(rule, key, hit, limit, Verdict.reject, 552, "5.3.4", text)
                continue
            hit = await counters.add(rule.name, key, size, limit, rule.window)
            if not hit.allowed:
                text = "Data rate limit exceeded, try again later"
                return self._refuse(rule, key, hit, limit, Verdict.tempfail, 451, "4.7.1", text)
        return None

    @hookimpl
    async def on_disconnect(self, session: Session) -> None:
        """Give back the concurrent slots the session holds."""
        slots = session.notes.pop(SLOTS_NOTE, [])
        token = f"{_NODE}:{session.id}"
        for counters, name, key in slots:
            await counters.release(name, key, token)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _applying(
        rules: Iterable[LimitRule], session: Session, transaction: Transaction | None
    ) -> Iterable[tuple[LimitRule, str]]:
        """The rules whose `when` holds, each with its key (rules with an empty key skipped)."""
        for rule in rules:
            if rule.when is not None and not rule.when(session, transaction):
                continue
            key = rule.counter_key(session, transaction)
            if key:
                yield rule, key

    @staticmethod
    def _refuse(
        rule: LimitRule,
        key: str,
        hit: Hit,
        limit: int,
        make: Callable[..., Verdict],
        code: int,
        status: str,
        text: str,
    ) -> Verdict:
        reason = f"limit {rule.name} for {key}: {hit.count} of {limit}"
        log.info("limit reached", rule=rule.name, key=key, count=hit.count, max=limit)
        return make(code, status, rule.text or text, reason=reason)


def _announced_size(sender: Address) -> int:
    """The SIZE parameter of MAIL FROM (0 when the client gave none)."""
    for param in sender.params:
        name, _, value = param.partition("=")
        if name.upper() == "SIZE" and (size := ascii_number(value)) is not None:
            return size
    return 0
