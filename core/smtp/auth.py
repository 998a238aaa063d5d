"""SMTP AUTH (RFC 4954) responses: decoding the PLAIN (RFC 4616) and LOGIN mechanisms.

Only decoding lives here; the exchange (``334`` challenges, cancel, replies) is in the
connection, and whether the credentials are good is for the plugins' ``authenticate`` hook.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")
"""The mechanisms the listener can offer, in the order it lists them."""

MAX_RESPONSE_LENGTH = 12288
"""Longest AUTH command or response line, CRLF included (RFC 4954 section 4)."""

LOGIN_USERNAME = "VXNlcm5hbWU6"
"""``334`` challenge of the LOGIN mechanism: base64 of ``Username:``."""
LOGIN_PASSWORD = "UGFzc3dvcmQ6"
"""``334`` challenge of the LOGIN mechanism: base64 of ``Password:``."""


class AuthSyntaxError(ValueError):
    """A response that cannot be decoded: the client gets ``501 5.5.2``."""


@dataclass(slots=True, frozen=True)
class Credentials:
    """What the client sent: the login (authentication identity) and the secret.

    ``repr`` leaves the secret out, so a stray log call cannot disclose it.
    """

    login: str
    secret: str

    def __repr__(self) -> str:
        return f"Credentials(login={self.login!r}, secret=<hidden>)"


def decode_base64(text: str) -> bytes:
    """Strict base64 (RFC 4648 alphabet, padding required); ``=`` alone is an empty response."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AuthSyntaxError("not base64") from None


def decode_plain(text: str) -> Credentials:
    """The PLAIN response ``[authzid] NUL authcid NUL passwd``, base64-encoded.

    An authorization identity other than the login itself is refused: mailgate does not let
    one user act for another.
    """
    parts = decode_base64(text).split(b"\0")
    if len(parts) != 3:
        raise AuthSyntaxError("PLAIN needs authzid NUL authcid NUL passwd")
    authzid, login, secret = (_utf8(p) for p in parts)
    if authzid and authzid != login:
        raise AuthSyntaxError("authorization identity differs from the login")
    return Credentials(_checked_login(login), _checked_secret(secret))


def decode_login_username(text: str) -> str:
    """The LOGIN mechanism's first response: the user name."""
    return _checked_login(_utf8(decode_base64(text)))


def decode_login_password(text: str) -> str:
    """The LOGIN mechanism's second response: the password."""
    return _checked_secret(_utf8(decode_base64(text)))


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthSyntaxError("not UTF-8") from None


def _checked_login(login: str) -> str:
    # The login reaches logs and reply texts (sender_auth): no control characters.
    if not login or any(ord(c) < 32 or ord(c) == 127 for c in login):
        raise AuthSyntaxError("empty login or control characters in it")
    return login


def _checked_secret(secret: str) -> str:
    if not secret or "\0" in secret:
        raise AuthSyntaxError("empty secret or NUL in it")
    return secret
