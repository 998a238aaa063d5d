"""The directory's core: the cache (TTL, negative answers, size, shared lookups, timeouts),
the password schemes (checked against openssl and slappasswd-style hashes), the hook's
place in the pipeline."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.directory import NOT_FOUND, Entry, Question
from mailgate.directory.cache import CacheSettings, DirectoryCache
from mailgate.directory.passwords import UnknownScheme, verify


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


FOUND = Entry(True, ("a@example.org",))


def test_found_and_not_found_have_their_own_ttl() -> None:
    clock = Clock()
    cache = DirectoryCache(CacheSettings(ttl=10, negative_ttl=2), clock)
    cache.put(Question.RECIPIENT, "A@Example.org", FOUND)
    cache.put(Question.RECIPIENT, "b@example.org", NOT_FOUND)
    assert cache.get(Question.RECIPIENT, "a@example.org") == FOUND  # no case
    assert cache.get(Question.SENDERS, "a@example.org") is None  # another question
    clock.now = 3
    assert cache.get(Question.RECIPIENT, "b@example.org") is None
    assert cache.get(Question.RECIPIENT, "a@example.org") == FOUND
    clock.now = 11
    assert cache.get(Question.RECIPIENT, "a@example.org") is None
    assert len(cache) == 0


def test_size_drops_the_least_recently_used() -> None:
    cache = DirectoryCache(CacheSettings(size=2))
    for name in "abc":
        cache.put(Question.RECIPIENT, name, FOUND)
        cache.get(Question.RECIPIENT, "a")
    assert cache.get(Question.RECIPIENT, "a") == FOUND
    assert cache.get(Question.RECIPIENT, "b") is None
    assert len(cache) == 2
    none = DirectoryCache(CacheSettings(size=0))
    none.put(Question.RECIPIENT, "a", FOUND)
    assert len(none) == 0


async def test_concurrent_lookups_share_one_fetch_and_failures_are_not_kept() -> None:
    cache = DirectoryCache(CacheSettings())
    calls = 0

    async def fetch() -> Entry:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return FOUND

    got = await asyncio.gather(*(cache.lookup(Question.RECIPIENT, "a", fetch) for _ in range(5)))
    assert got == [FOUND] * 5 and calls == 1

    async def broken() -> Entry:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await cache.lookup(Question.RECIPIENT, "b", broken)
    assert cache.get(Question.RECIPIENT, "b") is None


async def test_a_slow_lookup_times_out() -> None:
    cache = DirectoryCache(CacheSettings(lookup_timeout=0.05))

    async def slow() -> Entry:
        await asyncio.sleep(5)
        return FOUND

    with pytest.raises(TimeoutError):
        await cache.lookup(Question.RECIPIENT, "a", slow)


@pytest.mark.parametrize("settings_", [{"ttl": -1}, {"size": -1}, {"lookup_timeout": 0}])
def test_bad_cache_settings(settings_: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CacheSettings(**settings_).check()  # type: ignore[arg-type]


def openssl(flag: str, password: str, salt: str, rounds: int | None = None) -> str:
    """``openssl passwd`` (an independent SHA-crypt), the password on standard input."""
    salt_arg = salt if rounds is None else f"rounds={rounds}${salt}"
    argv = ["openssl", "passwd", flag, "-salt", salt_arg, "-stdin"]
    done = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("flag", ["-5", "-6"])
@pytest.mark.parametrize("password", ["alicepw", "x" * 70, "pässwörd", "a b"])
def test_sha_crypt_agrees_with_openssl(flag: str, password: str) -> None:
    stored = openssl(flag, password, "saltstring")
    scheme = "{SHA512-CRYPT}" if flag == "-6" else "{SHA256-CRYPT}"
    assert verify(stored, password) and verify(scheme + stored, password)
    assert not verify(stored, password + "!")


@settings(max_examples=15, deadline=None)
@given(
    st.text(min_size=1, max_size=40).filter(lambda s: not set(s) & {"\x00", "\n", "\r"}),
    st.sampled_from(["-5", "-6"]),
)
def test_sha_crypt_property_against_openssl(password: str, flag: str) -> None:
    assert verify(openssl(flag, password, "Ab3./xyz"), password)


def test_published_vector_with_rounds() -> None:
    stored = (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/"
        "UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
    )
    assert verify(stored, "Hello world!")


@pytest.mark.parametrize(
    ("scheme", "name"), [("SSHA", "sha1"), ("SSHA256", "sha256"), ("SSHA512", "sha512")]
)
def test_salted_sha(scheme: str, name: str) -> None:
    salt = b"\x01\x02\x03\x04"
    stored = (
        f"{{{scheme}}}" + base64.b64encode(hashlib.new(name, b"pw" + salt).digest() + salt).decode()
    )
    assert verify(stored, "pw") and not verify(stored, "pW")


@pytest.mark.parametrize(
    "stored",
    [
        "{PLAIN}pw",
        "$2b$12$abcdefghijklmnopqrstuv",
        "pw",
        "{SSHA}!!",
        "{SHA}c2hvcnQ=",
        "$6$rounds=99999999$s$x",
    ],
)
def test_values_that_cannot_be_checked(stored: str) -> None:
    with pytest.raises(UnknownScheme):
        verify(stored, "pw")
