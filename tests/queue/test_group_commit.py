"""Concurrent sessions share commits: 20 SMTP sessions queueing at once, measured end to end
(accepts, claims and delivery results all go through the one writer)."""

from __future__ import annotations

import asyncio

from tests.peers.smtp_sink import SmtpSink
from tests.queue.conftest import AppFactory
from tests.queue.helpers import Load


async def test_twenty_sessions_share_commits(
    queue_app: AppFactory, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await queue_app(store_url, f"127.0.0.1:{smtp_sink.port}")
    assert app.queue is not None
    writer = app.queue.writer
    load = Load(app.ports[0], 200, 20, "gc")
    load.start()
    await asyncio.to_thread(load.join)
    assert len(load.accepted) == 200 and not load.failed
    await asyncio.to_thread(smtp_sink.wait_for_messages, 200, 30.0)
    await asyncio.sleep(0.5)  # the last delivery results
    syncs = writer.commits / 200
    print(
        f"\n{store_url.partition(':')[0]}: 200 messages from 20 sessions, accepted and "
        f"delivered: {writer.writes} writes in {writer.commits} commits, "
        f"{syncs:.2f} commits (syncs) per message"
    )
    # Each message needs at least two writes (stored, then its result); shared commits
    # bring that well below two syncs per message.
    assert writer.writes >= 400
    assert syncs < 1.0
