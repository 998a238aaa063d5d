"""The fast verifier's pieces give dkimpy's bytes and dkimpy's answers (hypothesis, random
input): the split of a message, both canonicalisations, the removal of ``b=``, and
`fast.verifies` True only where dkimpy's ``DKIM.verify`` is True."""

from __future__ import annotations

import base64

import dkim
import nacl.signing
import pytest
from dkim.canonicalization import CanonicalizationPolicy, Relaxed, Simple
from dkim.util import InvalidTagValueList, parse_tag_value
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailgate.plugins.dkim.canonical import (
    Algorithm,
    Field,
    canonical_body,
    canonical_field,
    split_message,
)
from mailgate.plugins.dkim.fast import BodyHashes, _signed_bytes, tag_list, verifies, without_b
from mailgate.plugins.dkim.keys import generate


# Few distinct bytes, so that runs of white space, CR, LF and colons are common.
def _over(alphabet: bytes, size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=size).map(lambda b: bytes(alphabet[x % len(alphabet)] for x in b))


TEXT = _over(b" \t\r\n:aZ.\x0b;=", 120)
VALUE = _over(b" \t:aZ.\x0b;=", 40)
NAME = st.sampled_from([b"From", b"to", b"Subject", b"X-A", b"DKIM-Signature", b"from", b"a b"])
FOLD = st.sampled_from([b"", b"\r\n ", b"\r\n\t", b" ", b"\t\t", b"\n"])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Header lines (some folded, some malformed) and a body, mostly CRLF."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(NAME)
        parts = draw(st.lists(st.tuples(VALUE, FOLD), max_size=3))
        lines.append(name + b":" + b"".join(t + f for t, f in parts))
    if draw(st.integers(0, 4)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(TEXT))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(TEXT)


@settings(max_examples=400)
@given(data=messages() | TEXT)
def test_the_split_is_dkimpys(data: bytes) -> None:
    split = split_message(data)
    if split is None:
        return  # left to dkimpy
    headers, body = dkim.rfc822_parse(data)
    assert split == ([tuple(h) for h in headers], body)


def test_the_split_leaves_unusual_header_blocks_to_dkimpy() -> None:
    assert split_message(b"A: 1\nB: 2\r\n\r\nbody") is None  # a bare LF in the header block
    assert split_message(b" folded first: 1\r\n\r\nbody") is None  # dkimpy fails on this
    assert split_message(b"no colon here\r\n\r\nbody") is None
    assert split_message(b"A: 1\r\n") is None  # no body separator
    assert split_message(b"From someone\r\nA: 1\r\n\r\n") == ([(b"A", b" 1\r\n")], b"")


@settings(max_examples=400)
@given(body=TEXT | st.binary(max_size=60))
def test_body_canonicalisation_is_dkimpys(body: bytes) -> None:
    assert canonical_body(body, "simple") == Simple.canonicalize_body(body)
    assert canonical_body(body, "relaxed") == Relaxed.canonicalize_body(body)


@settings(max_examples=400)
@given(name=NAME, value=TEXT)
def test_field_canonicalisation_is_dkimpys(name: bytes, value: bytes) -> None:
    value += b"\r\n"
    assert canonical_field((name, value), "relaxed") == tuple(
        Relaxed.canonicalize_headers([(name, value)])[0]
    )
    assert canonical_field((name, value), "simple") == (name, value)


B64 = _over(b"aZ09+/= \t\r\n;b", 40)


@settings(max_examples=500)
@given(
    parts=st.lists(
        st.sampled_from([b"b=", b"bh=", b" b =", b";b=", b"\tb\r\n =", b"v=1"]) | B64, max_size=8
    )
)
def test_b_removal_is_dkimpys(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert without_b(value) == dkim.RE_BTAG.sub(b"\\1", value)


TAGS = _over(b"ab1_ =;\t\r\n\x0b.:", 50)


@settings(max_examples=500)
@given(
    value=TAGS
    | st.lists(st.sampled_from([b"v=1", b" a = x ", b";", b"b=", b"1=", b"=v"])).map(b"".join)
)
def test_tag_lists_are_read_as_dkimpy_reads_them(value: bytes) -> None:
    try:
        expected: dict[bytes, bytes] | type[Exception] = parse_tag_value(value)
    except InvalidTagValueList as exc:
        expected = type(exc)
    try:
        found: dict[bytes, bytes] | type[Exception] = tag_list(value)
    except InvalidTagValueList as exc:
        found = type(exc)
    assert found == expected


def _signed_by_scanning(fields: list[Field], names: list[bytes], algorithm: Algorithm) -> bytes:
    """RFC 6376 5.4.2 as written: for each name, the last field of that name above the one
    that name took before."""
    parts: list[bytes] = []
    below: dict[bytes, int] = {}
    for wanted in names:
        i = below.get(wanted, len(fields))
        while i > 0:
            i -= 1
            if fields[i][0].lower() == wanted:
                parts += canonical_field(fields[i], algorithm)[0], b":"
                parts.append(canonical_field(fields[i], algorithm)[1])
                break
        below[wanted] = i
    return b"".join(parts)


@settings(max_examples=300)
@given(
    fields=st.lists(st.tuples(NAME, VALUE.map(lambda v: v + b"\r\n")), max_size=8),
    names=st.lists(
        st.sampled_from([b"from", b"to", b"subject", b"x-a", b"a b", b"cc"]), max_size=8
    ),
    algorithm=st.sampled_from(["simple", "relaxed"]),
)
def test_signed_fields_are_taken_last_first_as_rfc6376_says(
    fields: list[Field], names: list[bytes], algorithm: Algorithm
) -> None:
    signature = (b"DKIM-Signature", b" v=1; b=abc\r\n")
    signed = _signed_bytes(fields, names, signature, algorithm)
    own = canonical_field((signature[0], without_b(signature[1])), algorithm)
    assert signed == _signed_by_scanning(fields, names, algorithm) + own[0] + b":" + own[1].rstrip()


# -- whole signatures ----------------------------------------------------------------------

DOMAIN = b"example.com"


@pytest.fixture(scope="module")
def keys() -> dict[bytes, tuple[bytes, bytes, bytes]]:
    """selector: (algorithm, private key as dkim.sign takes it, TXT record)."""
    rsa = generate("rsa", 1024)
    short = generate("rsa", 1024)
    seed = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(seed.verify_key)).decode()
    return {
        b"rsa": (b"rsa-sha256", rsa.pem, rsa.record.encode()),
        b"ed": (
            b"ed25519-sha256",
            base64.b64encode(bytes(seed)),
            f"k=ed25519; p={public}".encode(),
        ),
        b"other": (b"rsa-sha256", short.pem, rsa.record.encode()),  # signed by another key
    }


def _lookup(keys: dict[bytes, tuple[bytes, bytes, bytes]]):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        selector = name.split(b".")[0]
        return keys[selector][2] if selector in keys else None

    return lookup


@st.composite
def signed(draw: st.DrawFn, keys: dict[bytes, tuple[bytes, bytes, bytes]]) -> bytes:
    body = draw(TEXT)
    subject = draw(TEXT).replace(b"\r", b"").replace(b"\n", b"")
    message = b"From: a@example.com\r\nSubject: " + subject + b"\r\nTo: b@example.org\r\n\r\n"
    message += body.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    selector = draw(st.sampled_from(sorted(keys)))
    algorithm, private, _ = keys[selector]
    c = (
        draw(st.sampled_from([b"simple", b"relaxed"])),
        draw(st.sampled_from([b"simple", b"relaxed"])),
    )
    signature = dkim.sign(
        message,
        selector,
        DOMAIN,
        private,
        canonicalize=c,
        signature_algorithm=algorithm,
        include_headers=draw(st.sampled_from([[b"from"], [b"from", b"subject", b"to", b"x"]])),
        length=draw(st.booleans()),
    )
    signed_message: bytes = signature + message
    # Change something, sometimes: a byte of the headers or body, or add text.
    if draw(st.booleans()):
        at = draw(st.integers(0, len(signed_message) - 1))
        new = draw(st.sampled_from([b" ", b"\t", b"x", b"", b"  ", b"\r\n", b"From: c@d.e\r\n"]))
        signed_message = signed_message[:at] + new + signed_message[at + 1 :]
    return signed_message


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fast_verifies_only_what_dkimpy_verifies(
    keys: dict[bytes, tuple[bytes, bytes, bytes]], data: st.DataObject
) -> None:
    message = data.draw(signed(keys))
    split = split_message(message)
    assume(split is not None)
    assert split is not None
    fields, body = split
    lookup = _lookup(keys)
    signatures = [f for f in fields if f[0].lower() == b"dkim-signature"]
    checker = dkim.DKIM(message, minkey=1024)
    for idx, signature in enumerate(signatures):
        fast = verifies(fields, signature, BodyHashes(body), lookup, 1024)
        try:
            slow = bool(checker.verify(idx, dnsfunc=lookup))
        except Exception:  # dkimpy lets some of nacl's errors through, as verify.py knows
            slow = False
        assert fast == slow


def test_an_unchanged_signed_message_verifies_fast(
    keys: dict[bytes, tuple[bytes, bytes, bytes]],
) -> None:
    message = b"From: a@example.com\r\nSubject:  x \t y\r\n\r\nline  one \r\n\r\n\r\n"
    for selector in (b"rsa", b"ed"):
        algorithm, private, _ = keys[selector]
        for c in ((b"relaxed", b"relaxed"), (b"simple", b"simple")):
            signature = dkim.sign(
                message, selector, DOMAIN, private, canonicalize=c, signature_algorithm=algorithm
            )
            fields, body = split_message(signature + message) or ([], b"")
            assert verifies(fields, fields[0], BodyHashes(body), _lookup(keys), 1024)
    # A message signed by another key than the one published does not.
    algorithm, private, _ = keys[b"other"]
    signature = dkim.sign(message, b"other", DOMAIN, private)
    fields, body = split_message(signature + message) or ([], b"")
    assert not verifies(fields, fields[0], BodyHashes(body), _lookup(keys), 1024)


def test_canonical_bodies_are_policies_bodies() -> None:
    body = b"a \t b  \r\n\r\n"
    for c in (b"simple/simple", b"relaxed/relaxed"):
        policy = CanonicalizationPolicy.from_c_value(c)
        name = policy.body_algorithm.name.decode()
        assert canonical_body(body, name) == policy.canonicalize_body(body)
