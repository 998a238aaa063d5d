"""``limits``: connection, message, recipient and size limits per key, in memory or in Redis.

See `mailgate.plugins.limits.plugin` and docs/plugins/limits.md.
"""

from mailgate.plugins.limits.counters import Counters, Hit, MemoryCounters
from mailgate.plugins.limits.plugin import Limits
from mailgate.plugins.limits.redis_counters import RedisCounters
from mailgate.plugins.limits.settings import LimitRule, LimitsSettings

__all__ = [
    "Counters",
    "Hit",
    "LimitRule",
    "Limits",
    "LimitsSettings",
    "MemoryCounters",
    "RedisCounters",
]
