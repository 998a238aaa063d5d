"""The AUTH PLAIN and LOGIN response decoders: any input gives credentials or a clean error."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.smtp.auth import (
    AuthSyntaxError,
    Credentials,
    decode_login_password,
    decode_login_username,
    decode_plain,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_gives_login_and_secret() -> None:
    assert decode_plain(b64(b"\0alice@example.org\0s3cret")) == Credentials(
        "alice@example.org", "s3cret"
    )
    assert decode_plain(b64(b"alice\0alice\0pw \xc3\xa9")).secret == "pw é"


@pytest.mark.parametrize(
    "response",
    [
        "=",  # empty
        "!!!",  # not base64
        "YWJj",  # no NULs
        b64(b"bob\0alice\0pw"),  # acting for someone else
        b64(b"\0\0pw"),  # empty login
        b64(b"\0alice\0"),  # empty secret
        b64(b"\0ali\rce\0pw"),  # control character in the login
        b64(b"\0alice\0p\0w"),  # four fields
        b64(b"\0alice\0\xff"),  # not UTF-8
        b64(b"\0alice\0pw")[:-1],  # bad padding
    ],
)
def test_plain_refuses_malformed_responses(response: str) -> None:
    with pytest.raises(AuthSyntaxError):
        decode_plain(response)


def test_login_decodes_each_response() -> None:
    assert decode_login_username(b64(b"alice")) == "alice"
    assert decode_login_password(b64(b"s3cret")) == "s3cret"
    with pytest.raises(AuthSyntaxError):
        decode_login_username("=")
    with pytest.raises(AuthSyntaxError):
        decode_login_password(b64(b"a\0b"))


def test_credentials_repr_hides_the_secret() -> None:
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_auth_syntax_error(data: bytes) -> None:
    for text in (b64(data), data.decode("latin-1")):
        for decode in (decode_plain, decode_login_username, decode_login_password):
            try:
                result = decode(text)
            except AuthSyntaxError:
                continue
            assert result


@given(st.text(max_size=200))
def test_any_text_decodes_or_raises_auth_syntax_error(text: str) -> None:
    for decode in (decode_plain, decode_login_username, decode_login_password):
        with contextlib.suppress(AuthSyntaxError):
            decode(text)


@given(
    st.text(min_size=1).filter(lambda s: all(ord(c) >= 32 and ord(c) != 127 for c in s)),
    st.text(min_size=1).filter(lambda s: "\0" not in s),
)
def test_plain_round_trip(login: str, secret: str) -> None:
    encoded = b64(b"\0" + login.encode() + b"\0" + secret.encode())
    assert decode_plain(encoded) == Credentials(login, secret)
