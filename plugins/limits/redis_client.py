"""One Redis client per URL and event loop, shared by the plugins that use Redis.

The ``redis`` package is an optional dependency (``pip install 'mailgate[redis]'``):
`require_redis` turns its absence into a configuration error when the plugin is built. The
client is made on first use, inside the running loop, and kept for that loop: a reload
(which builds new plugin instances) reuses the connections instead of opening new ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import weakref
from typing import TYPE_CHECKING, Any

from mailgate.plugins.limits.loop_resources import close_with_loop

if TYPE_CHECKING:
    from redis.asyncio import Redis

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float, int], Redis]]
_clients = weakref.WeakKeyDictionary()


def require_redis(setting: str = "redis") -> None:
    """Raise ``ValueError`` naming `setting` when the ``redis`` package is not installed."""
    if importlib.util.find_spec("redis") is None:
        raise ValueError(f"{setting}: needs the redis package (pip install 'mailgate[redis]')")


def shared_client(url: str, timeout: float, connections: int = 32) -> Redis:
    """The client for `url` in the running loop (made on first use).

    It keeps at most `connections` connections; a command that finds them all busy waits for
    one, at most `timeout` seconds, as connecting and each command do. A refused connection
    is tried once more at once, then raised (the caller's ``on_error`` applies).
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    loop = asyncio.get_running_loop()
    clients = _clients.setdefault(loop, {})
    client = clients.get((url, timeout, connections))
    if client is None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        client = Redis.from_pool(pool)
        clients[(url, timeout, connections)] = client
        close_with_loop(f"redis {url}", client.aclose)
    return client


class LuaScript:
    """A Lua script run with EVALSHA (loaded into Redis the first time it is missing)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: list[str], args: list[Any]) -> Any:
        """Run the script on `client` with `keys` and `args`; returns its answer."""
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)
