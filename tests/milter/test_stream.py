"""`MilterStream`: the listener's own protocol reads what arrived, pauses past its high water,
and reports the end of the stream and a lost connection as asyncio's streams did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailgate.milter.stream import MilterStream


async def _pair(tmp_path: Path, high_water: int) -> tuple[MilterStream, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[MilterStream] = loop.create_future()

    async def serve(stream: MilterStream) -> None:
        accepted.set_result(stream)
        await asyncio.sleep(3600)

    path = str(tmp_path / "s.sock")
    server = await loop.create_unix_server(lambda: MilterStream(serve, high_water=high_water), path)
    _, writer = await asyncio.open_unix_connection(path)
    stream = await asyncio.wait_for(accepted, 5)
    server.close()
    return stream, writer


async def test_reads_everything_that_arrived_then_the_end(tmp_path: Path) -> None:
    stream, client = await _pair(tmp_path, high_water=1 << 18)
    client.write(b"one")
    client.write(b"two")
    await client.drain()
    received = b""
    while len(received) < 6:
        received += await asyncio.wait_for(stream.read(), 5)
    assert received == b"onetwo"
    client.close()
    assert await asyncio.wait_for(stream.read(), 5) == b""
    assert stream.task is not None
    stream.task.cancel()


async def test_reading_pauses_past_the_high_water_and_resumes_once_read(tmp_path: Path) -> None:
    stream, client = await _pair(tmp_path, high_water=1000)
    client.write(b"x" * 5000)
    await client.drain()
    for _ in range(100):
        if stream._reading_paused:
            break
        await asyncio.sleep(0.01)
    assert stream._reading_paused
    data = await stream.read()
    assert not stream._reading_paused
    while len(data) < 5000:
        data += await asyncio.wait_for(stream.read(), 5)
    assert data == b"x" * 5000
    client.close()
    assert stream.task is not None
    stream.task.cancel()


async def test_a_reply_to_a_closed_connection_raises_on_drain(tmp_path: Path) -> None:
    stream, client = await _pair(tmp_path, high_water=1 << 18)
    client.close()
    assert await asyncio.wait_for(stream.read(), 5) == b""
    stream.close()
    await asyncio.wait_for(stream.wait_closed(), 5)
    assert stream.is_closing()
    with pytest.raises(ConnectionResetError):
        await stream.drain()
    assert stream.task is not None
    stream.task.cancel()
