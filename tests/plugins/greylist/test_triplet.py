"""Greylisting's rules on their own: the decision, the sender as compared, the triplet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgate.plugins.greylist import Timing, Triplet, TripletState, decide
from mailgate.plugins.greylist.triplet import normalise_sender, whitelisted

TIMING = Timing(delay=300, retry_window=4 * 3600, pass_lifetime=35 * 86400)


def test_the_first_attempt_waits_the_delay() -> None:
    decision = decide(None, 1000.0, TIMING)
    assert (decision.allowed, decision.wait) == (False, 300)
    assert decision.state == TripletState(1000.0, 1000.0, None, 1)


def test_an_early_retry_is_told_the_time_left_and_does_not_restart_the_wait() -> None:
    decision = decide(TripletState(1000.0, 1000.0, None, 1), 1100.5, TIMING)
    assert (decision.allowed, decision.wait) == (False, 200)
    assert decision.state.first_seen == 1000.0
    assert decision.state.attempts == 2


def test_a_retry_after_the_delay_passes_and_keeps_passing() -> None:
    passed = decide(TripletState(1000.0, 1000.0, None, 1), 1300.0, TIMING)
    assert passed.allowed and passed.state.passed == 1300.0
    later = decide(passed.state, 1300.0 + 30 * 86400, TIMING)
    assert later.allowed and later.state.last_seen == 1300.0 + 30 * 86400


def test_a_retry_after_the_window_starts_again() -> None:
    decision = decide(TripletState(1000.0, 1000.0, None, 3), 1000.0 + 4 * 3600 + 1, TIMING)
    assert (decision.allowed, decision.wait) == (False, 300)
    assert decision.state.first_seen == 1000.0 + 4 * 3600 + 1


def test_a_pass_not_renewed_within_its_lifetime_expires() -> None:
    state = TripletState(0.0, 1000.0, 500.0, 0)
    assert not decide(state, 1000.0 + 35 * 86400 + 1, TIMING).allowed


states = st.one_of(
    st.none(),
    st.builds(
        TripletState,
        first_seen=st.floats(0, 1e6),
        last_seen=st.floats(0, 1e6),
        passed=st.one_of(st.none(), st.floats(0, 1e6)),
        attempts=st.integers(0, 100),
    ),
)


@given(states, st.floats(0, 2e6))
def test_decisions_are_consistent(state: TripletState | None, now: float) -> None:
    decision = decide(state, now, TIMING)
    if decision.allowed:
        assert decision.wait == 0
        assert decision.state.passed is not None
    else:
        assert 1 <= decision.wait <= 300
        assert decision.state.passed is None
    assert decision.state.last_seen == now
    if state is None:
        assert not decision.allowed  # nothing unknown ever passes at once


@given(st.floats(0, 1e6), st.floats(0, 299.99))
def test_no_retry_passes_before_the_delay(first: float, waited: float) -> None:
    assert not decide(TripletState(first, first, None, 1), first + waited, TIMING).allowed


def test_senders_are_compared_as_postgrey_compares_them() -> None:
    assert normalise_sender("Alice@Example.NET") == "alice@example.net"
    assert normalise_sender("prvs=1234abcd=alice@example.net") == "alice@example.net"
    assert normalise_sender("list-bounces-12345@lists.example") == "list-bounces-#@lists.example"
    assert normalise_sender("bounce-42-7@x.example") == "bounce-#-#@x.example"
    assert normalise_sender("user2024@example.net") == "user2024@example.net"  # not alone
    assert normalise_sender("") == ""


def test_the_triplet_uses_the_client_network() -> None:
    one = Triplet.of("192.0.2.1", "a@example.net", "B@Example.org", 24, 64)
    two = Triplet.of("192.0.2.200", "a@example.net", "b@example.org", 24, 64)
    assert one == two and one.client == "192.0.2.0/24" and one.recipient == "b@example.org"
    assert Triplet.of("192.0.3.1", "a@example.net", "b@example.org", 24, 64).key != one.key
    assert len(one.key) == 64


def test_automatic_whitelisting_needs_the_passes_and_recent_ones() -> None:
    assert whitelisted(5, 1000.0, 2000.0, 5, 86400)
    assert not whitelisted(4, 1000.0, 2000.0, 5, 86400)
    assert not whitelisted(5, 1000.0, 1000.0 + 86401, 5, 86400)
    assert not whitelisted(500, 1000.0, 2000.0, 0, 86400)  # off
