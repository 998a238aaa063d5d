"""The fuzz targets: each takes arbitrary bytes and must only succeed or refuse cleanly.

A target raises (and atheris reports the input that did it) when a parser fails in any way other
than its documented refusal, or when a property that must hold does not.
"""

from __future__ import annotations

from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from mailgate.milter import codec
    from mailgate.policy.protocol import PolicyProtocolError, RequestReader
    from mailgate.relay.dotstuff import DotStuffer
    from mailgate.smtp.commands import parse_params, parse_path
    from mailgate.smtp.data import DataReader
    from mailgate.syntax import ascii_number, valid_orcpt


def smtp_command(data: bytes) -> None:
    """MAIL/RCPT arguments: a path and parameters, or None; never an exception."""
    text = data.decode("utf-8", "surrogateescape")
    split = parse_path(text)
    if split is not None:
        address, rest = split
        assert "\r" not in address and "\n" not in address
        params = parse_params(rest)
        if params is not None:
            for value in params.values():
                if value is not None:
                    ascii_number(value)
                    valid_orcpt(value)


def data_reader(data: bytes) -> None:
    """DATA in arbitrary chunks: the end is found where it is, and a message that was
    dot-stuffed comes back byte for byte."""
    fdp = atheris.FuzzedDataProvider(data)
    cut = fdp.ConsumeIntInRange(1, 512)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    lines = [line + b"\r\n" for line in body.replace(b"\r", b"").replace(b"\0", b"").split(b"\n")]
    message = b"X: y\r\n\r\n" + b"".join(lines)
    stuffer = DotStuffer()
    wire = stuffer.feed(message) + stuffer.end()
    reader = DataReader(max_line_length=1 << 20, max_size=1 << 24, max_header_size=1 << 20)
    used = -1
    for start in range(0, len(wire), cut):
        used = reader.feed(wire[start : start + cut])
        if used >= 0:
            assert start + used == len(wire), (start, used, len(wire))
            break
    assert reader.done and reader.problem is None
    reader.body.seek(0)
    assert reader.header_block + b"\r\n" + reader.body.read() == message
    # The raw bytes too, cut anywhere: done or waiting, never an exception.
    raw_reader = DataReader()
    for start in range(0, len(data), cut):
        if raw_reader.feed(data[start : start + cut]) >= 0:
            break


def milter_frames(data: bytes) -> None:
    """Milter frames both ways: decoded, or `MilterProtocolError`; a decoded frame encodes."""
    for direction in ("commands", "replies"):  # the listener's side and the bridge's
        decoder = codec.FrameDecoder(direction, max_frame=1 << 16)
        try:
            for frame in decoder.feed(data):
                codec.encode(frame)
        except codec.MilterProtocolError:
            pass


def policy_requests(data: bytes) -> None:
    """Policy requests: dicts of str, or `PolicyProtocolError`."""
    reader = RequestReader(4096)
    try:
        for request in reader.feed(data):
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.items())
    except PolicyProtocolError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp_command": smtp_command,
    "data_reader": data_reader,
    "milter_frames": milter_frames,
    "policy_requests": policy_requests,
}
