"""The store: migrations, SQLite's durability settings, configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.queue import records
from mailgate.store import Store, StoreSettings
from mailgate.store.schema import metadata


def _differences(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_migrations_create_what_the_schema_describes(store_url: str) -> None:
    store = Store(StoreSettings(url=store_url))
    await store.open()
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            version = await conn.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar() == "0005_greylist"
        await store.close()
        await store.open()  # a second start finds nothing to do
    finally:
        await store.close()


async def test_sqlite_store_is_wal_with_a_sync_at_every_commit(tmp_path: Path) -> None:
    store = Store(StoreSettings(url=f"sqlite:///{tmp_path}/new/dir/q.db"))
    await store.open()  # the directory is made
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
    finally:
        await store.close()


def test_postgresql_claims_skip_locked_rows_and_sqlite_has_one_writer() -> None:
    import asyncio

    captured: list[str] = []

    class Capture:
        async def execute(self, statement: object) -> object:
            dialects = (postgresql.dialect(), sqlite.dialect())  # type: ignore[no-untyped-call]
            for dialect in dialects:
                captured.append(str(statement.compile(dialect=dialect)))  # type: ignore[attr-defined]
            raise _Done

    class _Done(Exception):
        """Raised once the statement is compiled: nothing runs."""

    with pytest.raises(_Done):
        asyncio.run(records.claim(Capture(), "n1", 60.0, 5))  # type: ignore[arg-type]
    pg, lite = captured
    assert "FOR UPDATE SKIP LOCKED" in pg and "RETURNING messages.id" in pg
    assert "FOR UPDATE" not in lite and "RETURNING" in lite


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        ("store", "url", '"mysql://x/y"', "sqlite:///PATH or postgresql://"),
        ("store", "busy_timeout", "0", "must be positive"),
        ("queue", "next_hop", '"nowhere"', '"host:port"'),
        ("queue", "min_backoff", "5000.0", "at most max_backoff"),
        ("queue", "concurency", "3", 'did you mean "concurrency"'),
    ],
)
def test_store_and_queue_mistakes_name_file_and_key(
    tmp_path: Path, table: str, key: str, value: str, expected: str
) -> None:
    (tmp_path / "mailgate.toml").write_text(f"[{table}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.file == str(tmp_path / "mailgate.toml")
    assert caught.value.key == f"{table}.{key}"
    assert expected in str(caught.value)


def test_a_listener_that_queues_turns_the_queue_on(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text('[[listener]]\negress = "queue"\n')
    config = load_config(tmp_path)
    assert config.queue is not None and config.queue.next_hop == ""
    (tmp_path / "mailgate.toml").write_text("[[listener]]\n")
    assert load_config(tmp_path).queue is None


async def test_a_store_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "mailgate.toml").write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/file/q.db"\n'
        '[[listener]]\naddress = "127.0.0.1:0"\negress = "queue"\n'
    )
    app = App(tmp_path, configure_logs=False)
    with pytest.raises(ConfigError) as caught:
        await app.start()
    assert caught.value.key == "store.url"
    assert app.listeners == []


def test_check_config_names_the_store_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailgate.cli import main

    (tmp_path / "mailgate.toml").write_text(
        '[store]\nurl = "postgresql://mg:secret@db.example:5432/mg"\n'
        '[queue]\nnext_hop = "smarthost.example:25"\n[[listener]]\naddress = "127.0.0.1:0"\n'
    )
    assert main(["check-config", "--config", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "queue: postgresql://mg:***@db.example:5432/mg -> smarthost.example:25" in out
    assert "secret" not in out


async def test_the_sqlite_files_are_private_to_mailgate(tmp_path: Path) -> None:
    store = Store(StoreSettings(url=f"sqlite:///{tmp_path}/new/mailgate.db"))
    await store.open()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("SELECT 1 FROM messages LIMIT 1"))
            files = sorted((tmp_path / "new").iterdir())
            assert [f.name for f in files] == ["mailgate.db", "mailgate.db-shm", "mailgate.db-wal"]
            for f in files:
                assert f.stat().st_mode & 0o777 == 0o600, f"{f.name}: {oct(f.stat().st_mode)}"
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o750
    finally:
        await store.close()
