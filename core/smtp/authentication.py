"""The SMTP AUTH exchange (RFC 4954): when AUTH may be given, the ``334`` challenges, and the
plugins' answer. Decoding the PLAIN and LOGIN responses is `mailgate.smtp.auth`'s."""

from __future__ import annotations

import asyncio
from typing import Protocol

from mailgate.egress import Reply
from mailgate.flow import SessionFlow
from mailgate.logging import get_logger
from mailgate.pipeline import AuthenticationUnavailable
from mailgate.smtp import replies
from mailgate.smtp.auth import (
    LOGIN_PASSWORD,
    LOGIN_USERNAME,
    AuthSyntaxError,
    Credentials,
    decode_login_password,
    decode_login_username,
    decode_plain,
)
from mailgate.smtp.settings import SmtpListenerSettings

log = get_logger("mailgate.smtp")


class ResponseTooLong(Exception):
    """An AUTH response line longer than RFC 4954 allows: the exchange ends with 500, and the
    next line the client sent is read as a command, not as the rest of the exchange."""


class Conversation(Protocol):
    """What the exchange needs from the connection."""

    async def send(self, reply: Reply) -> None:
        """Send a reply (held while pipelined commands wait)."""
        ...

    async def challenge(self, text: str) -> str | None:
        """Send ``334 text`` and read the response line; None when the client cancels (``*``);
        raises `ResponseTooLong` for a response over the limit."""
        ...

    async def flush(self) -> None:
        """Write the held replies now."""
        ...


class Authentication:
    """SMTP AUTH for one session (`flow`), as the listener's `settings` allow it."""

    def __init__(self, settings: SmtpListenerSettings, flow: SessionFlow) -> None:
        self.settings = settings
        self.flow = flow

    def offered(self) -> bool:
        """AUTH is in the EHLO reply: a plugin can check credentials, and TLS is on if needed."""
        return (
            bool(self.settings.auth_mechanisms)
            and self.flow.pipeline.implements("authenticate")
            and (self.flow.session.tls or not self.settings.auth_require_tls)
        )

    def refusal(self, esmtp: bool) -> Reply | None:
        """Why AUTH cannot be given now (RFC 4954 section 4), or None."""
        session = self.flow.session
        if not self.settings.auth_mechanisms or not self.flow.pipeline.implements("authenticate"):
            return replies.AUTH_NOT_OFFERED
        if not esmtp or not session.helo:
            return replies.NEED_HELO
        if self.settings.auth_require_tls and not session.tls:
            return replies.AUTH_NEEDS_TLS
        if session.auth_login:
            return replies.AUTH_TWICE
        if self.flow.tx is not None:
            return replies.AUTH_IN_TRANSACTION
        return None

    async def run(self, arg: str, esmtp: bool, talk: Conversation) -> None:
        """The AUTH command with argument `arg`, to its last reply."""
        problem = self.refusal(esmtp)
        if problem is not None:
            await talk.send(problem)
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if mechanism not in self.settings.auth_mechanisms:
            await talk.send(replies.AUTH_UNKNOWN_MECHANISM if mechanism else replies.SYNTAX)
            return
        try:
            credentials = await self._exchange(mechanism, initial or None, talk)
        except AuthSyntaxError:
            await talk.send(replies.AUTH_UNDECODABLE)
            return
        except ResponseTooLong:
            await talk.send(replies.LINE_TOO_LONG)
            return
        if credentials is None:
            await talk.send(replies.AUTH_CANCELLED)
            return
        await self._check(mechanism, credentials, talk)

    async def _exchange(
        self, mechanism: str, initial: str | None, talk: Conversation
    ) -> Credentials | None:
        """Read the client's responses; None if it cancelled with ``*``."""
        if mechanism == "PLAIN":
            response = initial if initial is not None else await talk.challenge("")
            return None if response is None else decode_plain(response)
        if initial is None:
            initial = await talk.challenge(LOGIN_USERNAME)
            if initial is None:
                return None
        login = decode_login_username(initial)
        secret = await talk.challenge(LOGIN_PASSWORD)
        return None if secret is None else Credentials(login, decode_login_password(secret))

    async def _check(self, mechanism: str, credentials: Credentials, talk: Conversation) -> None:
        """Ask the plugins; a plugin failure is a temporary failure, not a wrong password."""
        session = self.flow.session
        try:
            ok = await self.flow.pipeline.authenticate(
                session, mechanism, credentials.login, credentials.secret
            )
        except AuthenticationUnavailable as exc:
            log.warning(
                "authentication error",
                mechanism=mechanism,
                login=credentials.login,
                plugin=str(exc),
            )
            await talk.send(replies.AUTH_TEMPFAIL)
            return
        if not ok:
            log.info("authentication failed", mechanism=mechanism, login=credentials.login)
            session.count("auth_failures")
            await talk.flush()
            await asyncio.sleep(self.settings.auth_failure_delay)
            await talk.send(replies.AUTH_FAILED)
            return
        session.auth_login = credentials.login
        log.info("authenticated", mechanism=mechanism, login=credentials.login)
        await talk.send(replies.AUTH_OK)
