"""`RedisCounters`: the ``limits`` counters in a Redis shared by several nodes.

Each check is one Lua script, so counting is atomic across nodes: two nodes cannot both take
the last unit. The scripts read Redis's own clock (``TIME``), so the nodes' clocks need not
agree. Every key expires by itself: a rate counter after two windows, a concurrent slot after
``session_lifetime`` (a node that crashed never releases its slots; they lapse).

Keys (``key_prefix`` first): ``rate:<rule>:<key>``, a hash of the window index and the current
and previous windows' counts; ``slots:<rule>:<key>``, a sorted set of session tokens scored by
when they lapse.
"""

from __future__ import annotations

import math
from typing import Any

from mailgate.plugins.limits.counters import Hit
from mailgate.plugins.limits.redis_client import LuaScript, shared_client

RATE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[3])
local index = math.floor(now / window)
local v = redis.call('HMGET', KEYS[1], 'i', 'c', 'p')
local i, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
if i == index - 1 then
  p, c = c, 0
elseif i ~= index then
  c, p = 0, 0
end
local count = c
if ARGV[4] == '1' then
  count = c + p * (1 - (now % window) / window)
end
local amount = tonumber(ARGV[1])
if amount == 0 then
  if count < tonumber(ARGV[2]) then return {1, math.floor(count)} end
  return {0, math.floor(count)}
end
if count + amount > tonumber(ARGV[2]) then
  return {0, math.floor(count)}
end
redis.call('HSET', KEYS[1], 'i', index, 'c', c + amount, 'p', p)
redis.call('PEXPIRE', KEYS[1], window * 2)
return {1, math.floor(count + amount)}
""")
"""KEYS[1] the counter; ARGV amount, limit, window (ms), sliding (1/0): {allowed, count}."""

ACQUIRE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {1, redis.call('ZCARD', KEYS[1])}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, n + 1}
""")
"""KEYS[1] the slots; ARGV token, limit, lifetime (ms): {allowed, count}."""


class RedisCounters:
    """`mailgate.plugins.limits.counters.Counters` in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        connections: int = 32,
        prefix: str = "mailgate:limits:",
        sliding: bool = True,
        session_lifetime: float = 3600.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.connections = connections
        self.prefix = prefix
        self.sliding = sliding
        self.lifetime_ms = max(1, round(session_lifetime * 1000))

    def _client(self) -> Any:
        return shared_client(self.url, self.timeout, self.connections)

    async def add(self, name: str, key: str, amount: int, limit: int, window: float) -> Hit:
        """See `Counters.add`."""
        client = self._client()
        window_ms = max(1, math.ceil(window * 1000))
        args = [amount, limit, window_ms, 1 if self.sliding else 0]
        allowed, count = await RATE(client, [f"{self.prefix}rate:{name}:{key}"], args)
        return Hit(bool(allowed), int(count))

    async def acquire(self, name: str, key: str, token: str, limit: int) -> Hit:
        """See `Counters.acquire`."""
        client = self._client()
        slots = f"{self.prefix}slots:{name}:{key}"
        args = [token, limit, self.lifetime_ms]
        allowed, count = await ACQUIRE(client, [slots], args)
        return Hit(bool(allowed), int(count))

    async def release(self, name: str, key: str, token: str) -> None:
        """See `Counters.release`."""
        await self._client().zrem(f"{self.prefix}slots:{name}:{key}", token)
