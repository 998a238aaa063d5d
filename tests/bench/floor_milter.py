"""``python -m tests.bench.floor_milter SOCKET PORT CONF``: a milter that takes the steps
mailgate's milter listener takes for the plugin chain in CONF, and does none of its work.

bench_auth runs it beside mailgate's listener, on a unix socket (and on TCP PORT, only to see
that it is up). It negotiates with mailgate's own negotiation code for that chain, so Postfix
sends it the same steps and macros; it answers CONTINUE wherever Postfix waits, and at the end
of each message sends two header actions the size of the two mailgate sends there
(Received-SPF and Authentication-Results, fixed text that names no result). Nothing is decoded
past a frame's code: no session, no message, no checks. Postfix with this milter is the floor
of any milter taking mailgate's steps, so its rate is the ceiling of the milter route.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import uvloop

from mailgate.loader import load_config
from mailgate.milter import codec as c
from mailgate.milter.negotiation import negotiate
from mailgate.pipeline import Pipeline

_CONTINUE = c.encode(c.Continue())
_FILLER = "x" * 160
_RECEIVED_SPF = f" None (floor milter: nothing checked) {_FILLER}"
_AUTHENTICATION_RESULTS = (
    f" mx.bench.test; none (floor milter: nothing checked)\n\t{_FILLER}\n\t{_FILLER}"
)
END_OF_MESSAGE_REPLY = b"".join(
    c.encode(frame)
    for frame in (
        c.AddHeader(b"Received-SPF", _RECEIVED_SPF.encode()),
        c.InsertHeader(0, b"Authentication-Results", _AUTHENTICATION_RESULTS.encode()),
        c.Continue(),
    )
)
"""What the floor milter sends at every end of message: two headers, then CONTINUE."""


class FloorMilter(asyncio.Protocol):
    """One MTA connection: frames split by their length, answered by their code alone."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answered: frozenset[bytes] = frozenset()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= 4:
            length = int.from_bytes(buffer[pos : pos + 4], "big")
            if end - pos - 4 < length:
                break
            code = buffer[pos + 4 : pos + 5]
            if code == b"O":
                offer = c.decode_frame(code, buffer[pos + 5 : pos + 4 + length], "commands")
                assert isinstance(offer, c.OptNeg)
                agreed, reply = negotiate(offer, self.pipeline)
                self.answered = agreed.answered_codes
                out.append(c.encode(reply))
            elif code == b"E":
                out.append(END_OF_MESSAGE_REPLY)
            elif code == b"Q":
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            elif code in self.answered:
                out.append(_CONTINUE)
            pos += 4 + length
        self.buffer = buffer[pos:]
        if out:
            self.transport.write(b"".join(out))


async def serve(socket_path: Path, port: int, pipeline: Pipeline) -> None:
    """Listen on `socket_path` (mode 0666, for Postfix) and on 127.0.0.1:`port` until killed."""
    loop = asyncio.get_running_loop()
    unix = await loop.create_unix_server(lambda: FloorMilter(pipeline), path=str(socket_path))
    os.chmod(socket_path, 0o666)
    tcp = await loop.create_server(lambda: FloorMilter(pipeline), "127.0.0.1", port)
    async with unix, tcp:
        await asyncio.Event().wait()


def main() -> None:
    """Command line: the socket, the TCP port and the mailgate configuration directory."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor_milter")
    parser.add_argument("socket", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("conf", type=Path, help="the mailgate conf.d whose steps to take")
    args = parser.parse_args()
    pipeline = load_config(args.conf).pipeline()
    uvloop.run(serve(args.socket, args.port, pipeline))


if __name__ == "__main__":
    main()
