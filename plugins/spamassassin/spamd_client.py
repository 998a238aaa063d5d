"""A spamd client that streams the message from the spool.

aiospamc frames the request and parses the answer; the message itself is written to the
socket chunk by chunk, so a scan never holds a second copy of the message in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiospamc.header_values import ContentLengthValue, UserValue
from aiospamc.incremental_parser import ParseError, ResponseParser
from aiospamc.requests import Request
from aiospamc.responses import Response, ResponseException

from mailgate.sockaddr import SocketAddress


class SpamdError(Exception):
    """spamd could not be reached, did not answer in time, or answered with an error."""


@dataclass(frozen=True, slots=True)
class SpamReport:
    """spamd's judgement: its score, its own threshold and the names of the rules that hit."""

    score: float
    threshold: float
    rules: list[str] = field(default_factory=list)
    server: str = ""


class SpamdClient:
    """Sends SYMBOLS requests to the first spamd of `servers` that answers."""

    def __init__(
        self,
        servers: Sequence[SocketAddress],
        *,
        connect_timeout: float = 2.0,
        timeout: float = 20.0,
    ) -> None:
        if not servers:
            raise ValueError("at least one spamd server is needed")
        self.servers = list(servers)
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    async def _open(
        self, server: SocketAddress
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(self.connect_timeout):
            return await server.open_connection()

    async def symbols(
        self, server: SocketAddress, chunks: Iterable[bytes], size: int, user: str = ""
    ) -> SpamReport:
        """Score `size` bytes of message given as `chunks` on one server (no failover)."""
        headers: dict[str, object] = {"Content-length": ContentLengthValue(size)}
        if user:
            headers["User"] = UserValue(user)
        head = bytes(Request("SYMBOLS", headers=headers))
        try:
            reader, writer = await self._open(server)
        except (OSError, TimeoutError) as exc:
            raise SpamdError(f"cannot connect to spamd {server}: {exc or 'timeout'}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(head)
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                raw = await reader.read()
        except TimeoutError as exc:
            raise SpamdError(f"spamd {server} did not answer within {self.timeout:g}s") from exc
        except OSError as exc:
            raise SpamdError(f"spamd {server}: {type(exc).__name__}: {exc}") from exc
        finally:
            writer.close()
        return parse_symbols_response(raw, str(server))

    async def check(
        self, chunks: Callable[[], Iterable[bytes]], size: int, user: str = ""
    ) -> SpamReport:
        """Score the message on the first server that answers; `chunks()` is called per try."""
        errors: list[str] = []
        for server in self.servers:
            try:
                return await self.symbols(server, chunks(), size, user)
            except SpamdError as exc:
                errors.append(str(exc))
        raise SpamdError("; ".join(errors))


def parse_symbols_response(raw: bytes, server: str = "") -> SpamReport:
    """Parse spamd's answer to SYMBOLS (``Spam: True ; 1000.0 / 5.0`` and a rule list)."""
    if not raw:
        raise SpamdError(f"spamd {server} closed the connection without an answer")
    try:
        response = Response(**ResponseParser().parse(raw))
        response.raise_for_status()
    except ParseError as exc:
        raise SpamdError(f"spamd {server}: unreadable answer {raw[:80]!r}") from exc
    except ResponseException as exc:
        raise SpamdError(f"spamd {server}: {exc.code} {exc}") from exc
    spam = response.headers.spam
    if spam is None:
        raise SpamdError(f"spamd {server}: answer without a Spam header")
    text = response.body.decode("ascii", "replace").strip()
    rules = [r for r in (s.strip() for s in text.split(",")) if r]
    return SpamReport(spam.score, spam.threshold, rules, server)
