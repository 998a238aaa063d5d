"""`RedisState`: greylisting's state in a Redis shared by several nodes.

Keys (``key_prefix`` first): ``t:<triplet sha256>``, a hash of ``first``, ``last``, ``passed``
and ``attempts``; ``c:<client network>``, a hash of ``passes`` and ``last``. Each expires by
itself (a triplet not yet through after the retry window, anything after the pass lifetime),
so Redis needs no cleaning. One attempt is one optimistic transaction (WATCH, read, decide,
MULTI/EXEC, again if another node wrote in between): the decision is the same code as for the
store (`mailgate.plugins.greylist.triplet.decide`). Times are the node's clock (use NTP).
"""

from __future__ import annotations

import math
import time
from typing import Any

from mailgate.plugins.greylist.state import Outcome, Policy, outcome_of
from mailgate.plugins.greylist.triplet import Triplet, TripletState, decide
from mailgate.plugins.greylist.triplet import whitelisted as is_whitelisted
from mailgate.plugins.limits.redis_client import shared_client


class RedisState:
    """`mailgate.plugins.greylist.state.GreylistState` in Redis (see the module docstring)."""

    def __init__(
        self, url: str, policy: Policy, *, timeout: float, prefix: str, connections: int = 32
    ) -> None:
        self.url = url
        self.policy = policy
        self.timeout = timeout
        self.prefix = prefix
        self.connections = connections

    async def check(self, triplet: Triplet, count_pass: bool) -> Outcome:
        """See `GreylistState.check`."""
        from redis.exceptions import WatchError

        client = shared_client(self.url, self.timeout, self.connections)
        tkey = f"{self.prefix}t:{triplet.key}"
        ckey = f"{self.prefix}c:{triplet.client}"
        async with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    return await self._attempt(pipe, tkey, ckey, count_pass)
                except WatchError:
                    continue

    async def _attempt(self, pipe: Any, tkey: str, ckey: str, count_pass: bool) -> Outcome:
        policy, timing = self.policy, self.policy.timing
        lifetime = math.ceil(timing.pass_lifetime)
        await pipe.watch(tkey, ckey)  # until MULTI, commands run at once on this connection
        now = time.time()
        passes, client_last = await pipe.hmget(ckey, "passes", "last")
        outcome: Outcome | None = None
        if passes is not None and is_whitelisted(
            int(passes), float(client_last), now, policy.auto_whitelist, timing.pass_lifetime
        ):
            outcome = Outcome(True, whitelisted=True)
        state: TripletState | None = None
        if outcome is None:
            before = _triplet_state(await pipe.hgetall(tkey))
            decision = decide(before, now, timing)
            state = decision.state
            outcome = outcome_of(decision, before)
        pipe.multi()
        if state is not None:
            record: dict[str, float] = {
                "first": state.first_seen,
                "last": state.last_seen,
                "attempts": state.attempts,
            }
            if state.passed is not None:
                record["passed"] = state.passed
            pipe.delete(tkey)
            pipe.hset(tkey, mapping=record)
            ttl = lifetime if state.passed is not None else math.ceil(timing.retry_window)
            pipe.expire(tkey, ttl)
        if outcome.allowed and count_pass and policy.auto_whitelist:
            pipe.hincrby(ckey, "passes", 1)
            pipe.hset(ckey, "last", now)
            pipe.expire(ckey, lifetime)
        await pipe.execute()
        return outcome


def _triplet_state(fields: dict[bytes, bytes]) -> TripletState | None:
    """A triplet's hash as stored, or None when there is none."""
    if not fields:
        return None
    passed = fields.get(b"passed")
    return TripletState(
        first_seen=float(fields[b"first"]),
        last_seen=float(fields[b"last"]),
        passed=float(passed) if passed is not None else None,
        attempts=int(float(fields.get(b"attempts", b"0"))),
    )
