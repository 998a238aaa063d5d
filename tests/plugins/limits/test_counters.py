"""The in-memory counters: fixed and sliding windows, concurrent slots, the LRU bound."""

from __future__ import annotations

import sys
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from mailgate.plugins.limits import MemoryCounters
from mailgate.plugins.limits.settings import network_of


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_fixed_window_refuses_past_max_and_starts_afresh_at_the_next() -> None:
    clock = Clock(1200.0)  # the start of a 60-second window
    counters = MemoryCounters(10, sliding=False, clock=clock)
    hits = [await counters.add("r", "k", 1, 3, 60) for _ in range(4)]
    assert [h.allowed for h in hits] == [True, True, True, False]
    assert hits[-1].count == 3
    clock.now += 59.9
    assert not (await counters.add("r", "k", 1, 3, 60)).allowed
    clock.now += 0.1
    assert (await counters.add("r", "k", 1, 3, 60)).allowed


async def test_a_refused_attempt_does_not_count() -> None:
    counters = MemoryCounters(10, sliding=False, clock=Clock(1200.0))
    assert (await counters.add("r", "k", 3, 3, 60)).allowed
    for _ in range(5):
        assert not (await counters.add("r", "k", 1, 3, 60)).allowed
    assert (await counters.add("r", "k", 0, 4, 60)).allowed  # 3 of 4: one more would fit


async def test_sliding_window_weighs_the_previous_window() -> None:
    clock = Clock(1200.0)
    counters = MemoryCounters(10, sliding=True, clock=clock)
    for _ in range(10):
        assert (await counters.add("r", "k", 1, 10, 60)).allowed
    clock.now = 1260.0 + 30  # halfway into the next window: 10 * 0.5 = 5 still count
    hits = [await counters.add("r", "k", 1, 10, 60) for _ in range(6)]
    assert [h.allowed for h in hits] == [True] * 5 + [False]
    clock.now = 1260.0 + 54  # 10% of the previous window is left: 1 + 5
    assert (await counters.add("r", "k", 1, 10, 60)).count == 7
    clock.now = 1380.0  # two windows later: nothing left
    assert (await counters.add("r", "k", 10, 10, 60)).count == 10


async def test_the_lru_keeps_at_most_max_keys_and_forgets_the_least_recently_used() -> None:
    counters = MemoryCounters(3, sliding=False, clock=Clock(1200.0))
    for key in ("a", "b", "c"):
        assert (await counters.add("r", key, 1, 1, 60)).allowed
    assert len(counters) == 3
    assert not (await counters.add("r", "a", 1, 1, 60)).allowed  # "a" is now the most recent
    assert (await counters.add("r", "d", 1, 1, 60)).allowed  # the 4th key: "b" goes
    assert len(counters) == 3
    assert (await counters.add("r", "b", 1, 1, 60)).allowed  # forgotten: counts from zero
    assert not (await counters.add("r", "a", 1, 1, 60)).allowed  # kept
    assert len(counters) == 3


async def test_memory_per_counter_is_bounded() -> None:
    """At the cap, the table holds max_keys entries of a few hundred bytes each."""
    counters = MemoryCounters(10_000, sliding=True, clock=Clock(1200.0))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        await counters.add("messages:sender.address:60", f"user{i}@example.net", 1, 5, 60)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(counters) == 10_000
    per_key = used / 10_000
    print(f"memory per counter: {per_key:.0f} bytes", file=sys.stderr)
    assert per_key < 400


async def test_concurrent_slots_are_held_per_token_and_given_back() -> None:
    counters = MemoryCounters(10)
    assert (await counters.acquire("c", "ip", "s1", 2)).allowed
    assert (await counters.acquire("c", "ip", "s2", 2)).allowed
    refused = await counters.acquire("c", "ip", "s3", 2)
    assert (refused.allowed, refused.count) == (False, 2)
    await counters.release("c", "ip", "s1")
    assert (await counters.acquire("c", "ip", "s3", 2)).allowed
    await counters.release("c", "ip", "s2")
    await counters.release("c", "ip", "s3")
    await counters.release("c", "ip", "s3")  # twice: nothing happens
    assert counters.open_slots() == 0


@given(st.lists(st.integers(min_value=0, max_value=7), max_size=60), st.integers(0, 20))
async def test_a_fixed_window_counts_exactly_what_it_allows(amounts: list[int], limit: int) -> None:
    counters = MemoryCounters(4, sliding=False, clock=Clock(1200.0))
    total = 0
    for amount in amounts:
        hit = await counters.add("r", "k", amount, limit, 60)
        fits = total < limit if amount == 0 else total + amount <= limit
        assert hit.allowed == fits
        total += amount if hit.allowed else 0
        assert hit.count == total
        assert total <= limit


def test_network_of_masks_addresses_and_leaves_the_rest() -> None:
    assert network_of("192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:3::9", 24, 64) == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.77", 24, 64) == "192.0.2.0/24"
    assert network_of("192.0.2.77", 32, 64) == "192.0.2.77"
    assert network_of("alice@example.net", 24, 64) == "alice@example.net"
    assert network_of("", 24, 64) == ""
