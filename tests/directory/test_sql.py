"""directory_sql on SQLite and on a real PostgreSQL, through real SMTP sessions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.directory import Entry, Question
from mailgate.directory.cache import CacheSettings, DirectoryCache
from mailgate.directory.metrics import directory_metrics
from mailgate.loader import load_config
from tests.apps import started_apps
from tests.directory.conftest import (
    auth_code,
    mail_from_code,
    rcpt_codes,
    rcpt_reply,
    send,
    sha512_crypt,
    write_conf,
)
from tests.peers.ports import free_port
from tests.peers.postgres import Postgres
from tests.peers.smtp_sink import SmtpSink
from tests.test_metrics import scrape, value

SCHEMA = [
    "CREATE TABLE mailboxes (login TEXT PRIMARY KEY, address TEXT NOT NULL, password TEXT)",
    "CREATE TABLE aliases (source TEXT NOT NULL, target TEXT NOT NULL)",
]
QUERIES = """
recipient_query = \"\"\"
  SELECT address FROM mailboxes WHERE address = :address
  UNION SELECT target FROM aliases WHERE source = :address\"\"\"
senders_query = \"\"\"
  SELECT address FROM mailboxes WHERE login = :login
  UNION SELECT a.source FROM aliases a JOIN mailboxes m ON a.target = m.address
  WHERE m.login = :login\"\"\"
password_query = "SELECT password FROM mailboxes WHERE login = :login"
domains = ["example.org"]
"""


def rows() -> list[tuple[str, tuple[str, ...]]]:
    alice, bob = sha512_crypt("alicepw"), "{SSHA512}" + "not base64!"
    return [
        ("INSERT INTO mailboxes VALUES (?, ?, ?)", ("alice", "alice@example.org", alice)),
        ("INSERT INTO mailboxes VALUES (?, ?, ?)", ("bob", "bob@example.org", bob)),
        ("INSERT INTO aliases VALUES (?, ?)", ("sales@example.org", "alice@example.org")),
        ("INSERT INTO aliases VALUES (?, ?)", ("team@example.org", "alice@example.org")),
        ("INSERT INTO aliases VALUES (?, ?)", ("team@example.org", "bob@example.org")),
    ]


def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as db:
        for statement in SCHEMA:
            db.execute(statement)
        for statement, values in rows():
            db.execute(statement, values)
    return f"sqlite:///{path}"


def postgres_url(postgres: Postgres, name: str) -> str:
    dsn = postgres.create_database(name)
    commands = list(SCHEMA)
    for statement, values in rows():
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        commands.append(
            statement.replace("(?, ?, ?)", f"({quoted})").replace("(?, ?)", f"({quoted})")
        )
    postgres.psql(*commands, database=name)
    return dsn


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres_url(postgres, f"dir_{request.node.name.split('[')[0][-20:]}")


async def test_recipients_aliases_senders_and_auth(
    database_url: str, start_gate: Callable[..., Any], smtp_sink: SmtpSink
) -> None:
    app: App = await start_gate("directory_sql", f'url = "{database_url}"\n{QUERIES}')
    port = app.ports[0]
    codes = await asyncio.to_thread(
        rcpt_codes, port, ["alice@example.org", "alice+x@example.org", "ghost@example.org"]
    )
    assert codes == [250, 250, 550]
    code, text = await asyncio.to_thread(rcpt_reply, port, "ghost@example.org")
    assert (code, text[:5]) == (550, b"5.1.1")

    await asyncio.to_thread(send, port, ["team@example.org"])
    (tx,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1)
    assert sorted(tx.rcpts) == ["alice@example.org", "bob@example.org"]

    assert await asyncio.to_thread(auth_code, port, "alice", "alicepw") == 235
    assert await asyncio.to_thread(auth_code, port, "alice", "alicepw2") == 535
    assert await asyncio.to_thread(auth_code, port, "carol", "x") == 535  # unknown login
    assert await asyncio.to_thread(auth_code, port, "bob", "x") == 454  # unusable hash
    login = ("alice", "alicepw")
    assert await asyncio.to_thread(mail_from_code, port, login, "sales@example.org") == 250
    assert await asyncio.to_thread(mail_from_code, port, login, "bob@example.org") == 553


async def test_a_database_that_is_gone_tempfails(
    tmp_path: Path, start_gate: Callable[..., Any]
) -> None:
    url = sqlite_url(tmp_path)
    app: App = await start_gate("directory_sql", f'url = "{url}"\n{QUERIES}')
    (tmp_path / "users.db").unlink()
    (tmp_path / "users.db").mkdir()  # unreadable as a database
    code, text = await asyncio.to_thread(rcpt_reply, app.ports[0], "ghost@example.org")
    assert (code, text[:5]) == (451, b"4.3.0")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('url = "mysql://x/y"\nrecipient_query = "SELECT 1"', "url"),
        ('url = "sqlite:///x.db"\nrecipient_query = "DELETE FROM x"', "recipient_query"),
        (
            'url = "sqlite:///x.db"\nsenders_query = "SELECT a FROM t WHERE b = :user"',
            "senders_query",
        ),
        ('url = "sqlite:///x.db"', "recipient_query"),
        (
            'url = "sqlite:///x.db"\nrecipient_query = "SELECT 1"\nlookup_timeout = 0',
            "lookup_timeout",
        ),
    ],
)
def test_bad_settings_stop_start_up(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "05-directory_sql.toml").write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(tmp_path)


async def test_the_cache_is_counted_on_metrics(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    """Lookups by outcome and the answers kept, on a real ``/metrics`` endpoint."""
    conf = write_conf(
        tmp_path / "conf", "directory_sql", f'url = "{sqlite_url(tmp_path)}"\n{QUERIES}'
    )
    metrics_port = free_port()
    with (conf / "mailgate.toml").open("a") as toml:
        toml.write(f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
    host, port = smtp_sink.address
    async with started_apps() as apps:
        app = await apps.start(conf, relay=f"{host}:{port}")
        rcpts = ["alice@example.org", "alice@example.org", "ghost@example.org"]
        assert await asyncio.to_thread(rcpt_codes, app.ports[0], rcpts) == [250, 250, 550]
        samples = await asyncio.to_thread(scrape, metrics_port)

    def lookups(outcome: str) -> float | None:
        return value(samples, "mailgate_directory_lookups_total", backend="sql", outcome=outcome)

    assert lookups("miss") == 2  # alice and ghost, each asked of the database once
    hits = lookups("hit")
    assert hits is not None and hits >= 2  # rewrite and recipient_verify ask alike
    assert lookups("failed") == 0
    assert value(samples, "mailgate_directory_cache_entries", backend="sql") == 2


def test_a_stopped_backend_keeps_its_counts_in_the_totals() -> None:
    registry = CollectorRegistry()
    metrics = directory_metrics(registry)
    assert directory_metrics(registry) is metrics  # one collector a registry
    old, new = DirectoryCache(CacheSettings()), DirectoryCache(CacheSettings())
    metrics.add(old, "sql")
    metrics.add(new, "sql")  # a reload starts the new instance first
    old.hits, old.misses, old.failures = 5, 3, 1
    new.hits = 2
    metrics.remove(old)
    new.misses = 1
    got = {
        sample.labels["outcome"]: sample.value
        for family in registry.collect()
        if family.name == "mailgate_directory_lookups"
        for sample in family.samples
    }
    assert got == {"hit": 7, "miss": 4, "failed": 1}


async def test_a_failed_lookup_is_counted_and_not_kept() -> None:
    cache = DirectoryCache(CacheSettings())

    async def broken() -> Entry:
        raise ConnectionError("database gone")

    with pytest.raises(ConnectionError):
        await cache.lookup(Question.RECIPIENT, "a@example.org", broken)
    assert (cache.hits, cache.misses, cache.failures, len(cache)) == (0, 1, 1, 0)
