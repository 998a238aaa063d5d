"""directory_auth: SMTP AUTH against the directory's credentials.

Asks the directory for the login's credentials (an SQL backend's password hash, or an LDAP
entry to bind as) and checks the password with them. A login the directory does not know
gets no opinion (None), so another ``authenticate`` plugin may know it. A dead directory, or
a stored hash of a scheme that cannot be checked, is a failure: the client gets
``454 4.7.0``, never ``535`` for a password nobody looked at.
"""

from __future__ import annotations

from mailgate.directory import DirectoryUnavailable, Question, ask
from mailgate.plugin import hookimpl
from mailgate.session import Session


class DirectoryAuth:
    """Checks SMTP AUTH credentials with the directory (see the module docstring)."""

    reads: frozenset[str] = frozenset()

    @hookimpl
    async def authenticate(self, session: Session, login: str, secret: str) -> bool | None:
        """True/False for a login the directory knows; None for one it does not."""
        try:
            entry = await ask(session, Question.CREDENTIALS, login)
        except DirectoryUnavailable as exc:
            raise ConnectionError(str(exc)) from None
        if entry is None or not entry.found or entry.credentials is None:
            return None
        return await entry.credentials.verify(secret)
