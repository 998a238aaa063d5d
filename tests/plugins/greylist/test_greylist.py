"""Greylisting end to end: a real SMTP client (smtplib) retrying through mailgate's listener to
a real smtp-sink, with the state in the store (SQLite and PostgreSQL) or in a real Redis.
Delays are a second or less so that the retries are real and the tests short."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.plugins.greylist import Greylist, Triplet
from mailgate.plugins.greylist.state import Policy, StoreState
from mailgate.plugins.greylist.triplet import Timing
from mailgate.store import StoreSettings
from mailgate.store.schema import greylist_clients, greylist_triplets
from mailgate.testing.server import Server
from tests.peers.redis import Redis
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.limits.client import send
from tests.plugins.limits.conftest import Gateway

ROOT = Path(__file__).resolve().parents[3]
GREYLISTED = re.compile(rb"4\.7\.1 Greylisted, try again in (\d+) seconds")


def settings(store_url: str = "", **extra: object) -> str:
    """A greylist file: 1-second delay, loopback not exempt, `extra` keys added."""
    lines = ["delay = 1.0", "retry_window = 30.0", "exempt_networks = []"]
    if store_url:
        lines.append(f'store = "{store_url}"')
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")  # JSON strings, lists, numbers are TOML
    return "\n".join(lines) + "\n"


async def greylist_gate(gateway: Gateway, text: str) -> App:
    return await gateway(text, name="16-greylist.toml")


async def rows(store_url: str, table: Table) -> int:
    """How many rows `table` has in the store at `store_url`."""
    engine = create_async_engine(StoreSettings(url=store_url).async_url())
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    finally:
        await engine.dispose()


async def test_first_attempt_is_greylisted_and_the_retry_after_the_delay_passes(
    gateway: Gateway, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await greylist_gate(gateway, settings(store_url))
    port = app.ports[0]
    code, text, _ = await asyncio.to_thread(send, port)
    assert code == 450
    assert GREYLISTED.fullmatch(text)
    assert smtp_sink.messages() == []
    await asyncio.sleep(1.1)
    code, _, _ = await asyncio.to_thread(send, port)
    assert code == 250
    assert (await asyncio.to_thread(send, port))[0] == 250  # passed: no more waiting
    assert len(smtp_sink.wait_for_messages(2)) == 2
    assert await rows(store_url, greylist_triplets) == 1


async def test_the_reply_says_how_long_to_wait(gateway: Gateway, store_url: str) -> None:
    app = await greylist_gate(gateway, settings(store_url).replace("delay = 1.0", "delay = 25.0"))
    _, text, _ = await asyncio.to_thread(send, app.ports[0])
    match = GREYLISTED.fullmatch(text)
    assert match is not None and int(match.group(1)) == 25
    await asyncio.sleep(1.0)
    _, text, _ = await asyncio.to_thread(send, app.ports[0])
    match = GREYLISTED.fullmatch(text)
    assert match is not None and 15 <= int(match.group(1)) <= 24  # counting down


async def test_each_recipient_is_its_own_triplet(gateway: Gateway, store_url: str) -> None:
    app = await greylist_gate(gateway, settings(store_url))
    port = app.ports[0]
    assert (await asyncio.to_thread(send, port, "a@example.net", ("x@example.org",)))[0] == 450
    await asyncio.sleep(1.1)
    rcpts = ("x@example.org", "y@example.org")
    code, _, replies = await asyncio.to_thread(send, port, "a@example.net", rcpts)
    assert code == 250
    assert replies["x@example.org"][0] == 250
    assert replies["y@example.org"][0] == 450


async def test_a_retry_after_the_window_waits_again(gateway: Gateway, store_url: str) -> None:
    text = settings(store_url).replace("retry_window = 30.0", "retry_window = 2.0")
    text = text.replace("delay = 1.0", "delay = 0.5")
    app = await greylist_gate(gateway, text)
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 450
    await asyncio.sleep(2.2)
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 450  # too late: new wait
    await asyncio.sleep(0.6)
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250


async def test_the_client_network_counts_not_the_address(gateway: Gateway, store_url: str) -> None:
    app = await greylist_gate(gateway, settings(store_url))
    port = app.ports[0]
    assert (await asyncio.to_thread(send, port, source="127.0.0.1"))[0] == 450
    await asyncio.sleep(1.1)
    assert (await asyncio.to_thread(send, port, source="127.0.0.2"))[0] == 250  # same /24


async def test_a_client_is_whitelisted_after_n_passes(
    gateway: Gateway, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await greylist_gate(gateway, settings(store_url, auto_whitelist=2))
    port = app.ports[0]
    senders = ["one@example.net", "two@example.net"]
    for sender in senders:
        assert (await asyncio.to_thread(send, port, sender))[0] == 450
    await asyncio.sleep(1.1)
    for sender in senders:  # two messages get through: the network is whitelisted
        assert (await asyncio.to_thread(send, port, sender))[0] == 250
    code, _, _ = await asyncio.to_thread(send, port, "new@example.net", ("z@example.org",))
    assert code == 250  # a triplet never seen, from a whitelisted network
    assert len(smtp_sink.wait_for_messages(3)) == 3
    assert await rows(store_url, greylist_clients) == 1


@pytest.mark.parametrize(
    ("extra", "sender", "recipient"),
    [
        ({"exempt_recipient_domains": ["spam.example"]}, "a@b.example", "p@spam.example"),
        ({"exempt_recipient_domains": [".corp.example"]}, "a@b.example", "p@mx.corp.example"),
        ({"exempt": "sender.domain == 'friend.example'"}, "a@friend.example", "p@example.org"),
    ],
)
async def test_exemptions(
    gateway: Gateway, tmp_path: Path, extra: dict[str, object], sender: str, recipient: str
) -> None:
    app = await greylist_gate(gateway, settings(f"sqlite:///{tmp_path}/gl.db", **extra))
    assert (await asyncio.to_thread(send, app.ports[0], sender, (recipient,)))[0] == 250
    assert (await asyncio.to_thread(send, app.ports[0], "a@other.example"))[0] == 450


async def test_local_networks_are_exempt_by_default(gateway: Gateway, tmp_path: Path) -> None:
    app = await greylist_gate(gateway, f'store = "sqlite:///{tmp_path}/gl.db"\n')
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250


async def test_the_state_is_in_the_core_store_by_default(gateway: Gateway, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/core.db"
    app = await gateway(
        "delay = 1.0\nexempt_networks = []\n",
        core_toml=f'[store]\nurl = "{url}"\n',
        name="16-greylist.toml",
    )
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 450
    assert await rows(url, greylist_triplets) == 1


async def test_two_nodes_share_the_store(
    store_url: str, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "16-greylist.toml").write_text(settings(store_url))
    relay = f"{smtp_sink.host}:{smtp_sink.port}"
    nodes = [Server(conf, relay, log_path=tmp_path / f"node{i}.log") for i in (1, 2)]
    try:
        for node in nodes:
            await asyncio.to_thread(node.start)
        assert (await asyncio.to_thread(send, nodes[0].port))[0] == 450
        await asyncio.sleep(1.1)
        assert (await asyncio.to_thread(send, nodes[1].port))[0] == 250  # retried elsewhere
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)


async def counts(store_url: str) -> tuple[int, int]:
    """Rows of the triplets and clients tables."""
    return await rows(store_url, greylist_triplets), await rows(store_url, greylist_clients)


async def test_expired_rows_are_deleted(store_url: str) -> None:
    clock = [1000.0]
    policy = Policy(Timing(delay=100, retry_window=300, pass_lifetime=600), 1, 10)
    state = StoreState(StoreSettings(url=store_url), policy, clock=lambda: clock[0])
    passed = Triplet("192.0.2.0/24", "a@example.net", "b@example.org")
    waiting = Triplet("192.0.3.0/24", "c@example.net", "d@example.org")
    assert not (await state.check(passed, True)).allowed
    clock[0] += 150
    assert (await state.check(passed, True)).first_pass
    assert not (await state.check(waiting, True)).allowed
    assert (await counts(store_url)) == (2, 1)
    clock[0] += 400  # the waiting one is past its window; the passed one is not
    await state.check(Triplet("198.51.100.0/24", "e@x.example", "f@x.example"), False)
    assert (await counts(store_url)) == (2, 1)  # passed + the new one
    clock[0] += 700  # past every lifetime
    await state.check(Triplet("203.0.113.0/24", "g@x.example", "h@x.example"), False)
    assert (await counts(store_url)) == (1, 0)


# -- Redis ------------------------------------------------------------------------------------


async def test_greylisting_in_redis(
    gateway: Gateway, redis_server: Redis, smtp_sink: SmtpSink
) -> None:
    app = await greylist_gate(gateway, settings(redis=redis_server.url, auto_whitelist=1))
    port = app.ports[0]
    assert (await asyncio.to_thread(send, port))[0] == 450
    [key] = redis_server.keys("mailgate:greylist:t:*")
    assert 25 <= int(redis_server.cli("ttl", key)) <= 30  # the retry window
    await asyncio.sleep(1.1)
    assert (await asyncio.to_thread(send, port))[0] == 250
    assert int(redis_server.cli("ttl", key)) > 30 * 86400  # passed: the pass lifetime
    assert redis_server.keys("mailgate:greylist:c:*") == ["mailgate:greylist:c:127.0.0.0/24"]
    code, _, _ = await asyncio.to_thread(send, port, "new@example.net")  # whitelisted now
    assert code == 250
    assert len(smtp_sink.wait_for_messages(2)) == 2


async def test_redis_down_follows_on_error(gateway: Gateway, redis_server: Redis) -> None:
    app = await greylist_gate(gateway, settings(redis=redis_server.url, redis_timeout=0.5))
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 450
    redis_server.stop()
    code, text, _ = await asyncio.to_thread(send, app.ports[0])
    assert (code, text) == (451, b"4.3.0 Temporary local problem, try again later")


async def test_store_down_follows_on_error(gateway: Gateway, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    text = settings(f"sqlite:///{blocked}/gl.db") + 'on_error = "accept"\n'
    app = await greylist_gate(gateway, text)
    started = time.monotonic()
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250
    assert time.monotonic() - started < 10


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("delay = 0\n", "delay", "positive"),
        ("delay = 600.0\nretry_window = 300.0\n", "retry_window", "longer"),
        ("auto_whitelist = -1\n", "auto_whitelist", "negative"),
        ("ipv6_prefix = 129\n", "ipv6_prefix", "0 to 128"),
        ('redis = "127.0.0.1:6379"\n', "redis", "redis://"),
        ('store = "mysql://x/y"\n', "store", "sqlite"),
        ('exempt = "sender.nope"\n', "exempt", "CEL"),
        ('redis = "redis://h/0"\nstore = "sqlite:////tmp/x.db"\n', "store", "redis"),
    ],
)
def test_bad_settings_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    (tmp_path / "16-greylist.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.file == str(tmp_path / "16-greylist.toml")
    assert caught.value.key == key
    assert expected in str(caught.value)


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    text = (ROOT / "conf.d" / "16-greylist.toml").read_text()
    (tmp_path / "16-greylist.toml").write_text(text)
    assert load_config(tmp_path).disabled == [("greylist", str(tmp_path / "16-greylist.toml"))]
    (tmp_path / "16-greylist.toml").write_text(text.replace("enabled = false", "enabled = true"))
    plugins = load_config(tmp_path).pipeline().plugins
    assert isinstance(plugins[-1].instance, Greylist)


def test_the_store_is_closed_when_the_loop_ends(tmp_path: Path) -> None:
    """No database thread outlives the loop that opened the store (mailgate serve's exit)."""

    def sqlite_threads() -> int:
        return sum("_connection_worker_thread" in t.name for t in threading.enumerate())

    before = sqlite_threads()
    policy = Policy(Timing(), 5)
    state = StoreState(StoreSettings(url=f"sqlite:///{tmp_path}/gl.db"), policy)
    with asyncio.Runner() as runner:
        triplet = Triplet("192.0.2.0/24", "a@example.net", "b@example.org")
        assert not runner.run(state.check(triplet, True)).allowed
        assert sqlite_threads() > before
    assert sqlite_threads() == before
