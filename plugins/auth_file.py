"""auth_file: SMTP AUTH against a file of ``login:hash`` lines, hashed with scrypt.

The file holds one user a line; blank lines and lines starting with ``#`` are ignored::

    alice@example.org:$scrypt$n=16384,r=8,p=1$<salt>$<hash>

The hash is self-describing: the scrypt cost parameters, then the salt and the derived key in
base64 (standard alphabet, without padding). Make a line with::

    python -m mailgate.plugins.auth_file hash alice@example.org

The file is read again when its modification time or size changes, so adding a user needs no
reload. Checks run in a thread (scrypt is slow on purpose) and compare in constant time. A
login that is not in the file costs the same work as a wrong password, and gets no opinion
(``None``), so another ``authenticate`` plugin after this one may know it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from mailgate.logging import get_logger
from mailgate.plugin import hookimpl

log = get_logger("mailgate.plugins.auth_file")

DEFAULT_N, DEFAULT_R, DEFAULT_P = 16384, 8, 1
"""Cost of new hashes: 16 MiB and about 50 ms per check here (OWASP's scrypt minimum is
N=2^17 with r=8, p=1 at 128 MiB; N=2^14 keeps a burst of logins from using gigabytes)."""
MAX_N = 1 << 20
"""Largest N accepted from the file, so a bad line cannot make a check take 1 GiB."""
_SALT_BYTES, _KEY_BYTES = 16, 32
_HASH = re.compile(
    r"\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})\Z"
)


@dataclass(slots=True, frozen=True)
class ScryptHash:
    """One parsed ``$scrypt$...`` hash."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        """Parse `text`; ValueError if it is not a hash this plugin can check."""
        match = _HASH.match(text)
        if match is None:
            raise ValueError("not $scrypt$n=N,r=R,p=P$SALT$HASH")
        n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        if n < 2 or n > MAX_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError(f"scrypt parameters out of range (n a power of 2 up to {MAX_N})")
        salt, key = _b64decode(match.group(4)), _b64decode(match.group(5))
        if len(key) < 16:
            raise ValueError("derived key shorter than 16 bytes")
        return cls(n, r, p, salt, key)

    @classmethod
    def make(
        cls, secret: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
    ) -> ScryptHash:
        """A new hash of `secret` with a random salt."""
        salt = os.urandom(_SALT_BYTES)
        return cls(n, r, p, salt, _scrypt(secret, salt, n, r, p, _KEY_BYTES))

    def verify(self, secret: str) -> bool:
        """True if `secret` gives this hash (constant-time comparison)."""
        candidate = _scrypt(secret, self.salt, self.n, self.r, self.p, len(self.key))
        return hmac.compare_digest(candidate, self.key)

    def __str__(self) -> str:
        salt, key = _b64encode(self.salt), _b64encode(self.key)
        return f"$scrypt$n={self.n},r={self.r},p={self.p}${salt}${key}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    text = text.rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("bad base64") from None


def parse_users(text: str, source: str = "") -> dict[str, ScryptHash]:
    """``login -> hash`` from the file's text; bad lines are logged (by number) and skipped."""
    users: dict[str, ScryptHash] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        login, colon, hashed = line.rpartition(":")
        try:
            if not colon or not login:
                raise ValueError("not login:hash")
            users[login] = ScryptHash.parse(hashed)
        except ValueError as exc:
            # The line itself is not logged: it could be a password pasted by mistake.
            log.warning("bad line skipped", file=source, line=number, reason=str(exc))
    return users


@dataclass(slots=True)
class AuthFileSettings:
    """The plugin's settings (``conf.d/NN-auth_file.toml``)."""

    path: str = ""
    """The ``login:hash`` file (required)."""


class AuthFile:
    """Checks SMTP AUTH credentials against a ``login:hash`` file (see the module docstring)."""

    Settings = AuthFileSettings
    reads: frozenset[str] = frozenset()
    """Envelope only (it has no content hooks)."""

    def __init__(self, settings: AuthFileSettings | None = None) -> None:
        self.settings = settings or AuthFileSettings()
        if not self.settings.path:
            raise ValueError("path: the login:hash file is required")
        self._path = Path(self.settings.path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, ScryptHash] = {}
        try:
            self._reload_if_changed()
        except OSError as exc:
            raise ValueError(f"path: cannot read {self._path}: {exc.strerror or exc}") from None
        self._dummy = ScryptHash.make("not a password")

    def _reload_if_changed(self) -> dict[str, ScryptHash]:
        """The users, read again if the file's mtime or size changed since the last read."""
        st = self._path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._users = parse_users(self._path.read_text("utf-8"), str(self._path))
                self._stamp = stamp
                log.info("users loaded", file=str(self._path), users=len(self._users))
            return self._users

    def check(self, login: str, secret: str) -> bool | None:
        """True/False for a known login, None for an unknown one (after the same work)."""
        known = self._reload_if_changed().get(login)
        if known is None:
            self._dummy.verify(secret)
            return None
        return known.verify(secret)

    @hookimpl
    async def authenticate(self, login: str, secret: str) -> bool | None:
        """Check `login` and `secret` in a thread, so scrypt does not block the event loop."""
        return await asyncio.to_thread(self.check, login, secret)


def main(argv: list[str] | None = None) -> int:
    """``python -m mailgate.plugins.auth_file hash [LOGIN]``: print a hash (or a file line).

    The password is asked twice on a terminal, or read as one line from standard input.
    """
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "hash" or len(args) > 2:
        print("usage: python -m mailgate.plugins.auth_file hash [LOGIN]", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        secret = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != secret:
            print("passwords differ", file=sys.stderr)
            return 1
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print("empty password", file=sys.stderr)
        return 1
    hashed = str(ScryptHash.make(secret))
    print(f"{args[1]}:{hashed}" if len(args) == 2 else hashed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
