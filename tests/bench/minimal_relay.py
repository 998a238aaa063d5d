"""The minimal relay the benchmark compares mailgate against.

An aiosmtpd server whose DATA handler relays the message through a pooled aiosmtplib
connection and answers the client with the downstream's own reply. It is the smallest
correct before-queue proxy that can be built from the two libraries mailgate uses, so it
is the yardstick for the cost of mailgate's own code. It runs as its own process so that
its CPU time and memory are measured alone:

    python tests/bench/minimal_relay.py --listen 127.0.0.1:PORT --relay 127.0.0.1:SINKPORT

It depends only on aiosmtpd and aiosmtplib (no mailgate, no relative imports), because the
harness starts it by file path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


def split_address(text: str) -> tuple[str, int]:
    """Split "HOST:PORT" into its parts."""
    host, _, port = text.rpartition(":")
    return host, int(port)


class ConnectionPool:
    """Idle, connected aiosmtplib clients to one downstream, reused across messages."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host = host
        self.port = port
        self.size = size
        self._idle: list[aiosmtplib.SMTP] = []

    async def acquire(self) -> aiosmtplib.SMTP:
        """Return an idle connection, or open a new one when none is idle."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, local_hostname="relay.bench.test", timeout=30
        )
        await client.connect()
        await client.ehlo()
        return client

    async def release(self, client: aiosmtplib.SMTP, *, reusable: bool) -> None:
        """Give a connection back, or close it when it is broken or the pool is full."""
        if reusable and client.is_connected and len(self._idle) < self.size:
            self._idle.append(client)
            return
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            client.close()


class RelayHandler:
    """aiosmtpd handler: relay at end of data, answer with the downstream's reply."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Relay the message; the client gets 250 only after the downstream said 250."""
        try:
            client = await self.pool.acquire()
        except (aiosmtplib.SMTPException, OSError):
            return "451 4.4.1 downstream unavailable"
        content = envelope.original_content or b""
        try:
            _, reply = await client.sendmail(
                envelope.mail_from or "", list(envelope.rcpt_tos), content
            )
        except aiosmtplib.SMTPResponseException as exc:
            await client.rset()
            await self.pool.release(client, reusable=True)
            return f"{exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError):
            await self.pool.release(client, reusable=False)
            return "451 4.4.2 downstream failed"
        await self.pool.release(client, reusable=True)
        return f"250 {reply}"


async def serve(listen: str, relay: str, pool_size: int) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    host, port = split_address(listen)
    handler = RelayHandler(ConnectionPool(*split_address(relay), pool_size))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.bench.test", enable_SMTPUTF8=True),
        host,
        port,
        backlog=1024,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept SMTP on")
    parser.add_argument("--relay", required=True, help="HOST:PORT of the downstream")
    parser.add_argument("--pool-size", type=int, default=32, help="idle downstream connections")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.relay, args.pool_size))


if __name__ == "__main__":
    main()
