"""``mailgate queue``, on SQLite and PostgreSQL: a store holding a message in each state
(pending, deferred, bounced, held), listed, shown and acted on, read as a user reads it."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.cli import main
from mailgate.queue import records
from mailgate.queue.records import NewMessage
from mailgate.session import Address, Transaction
from mailgate.store import Store, StoreSettings
from mailgate.store.schema import messages, recipients
from tests.peers.ports import free_port
from tests.queue.helpers import store_rows, write_config

HOUR = 3600.0


def _transaction(sender: str, rcpts: list[str]) -> Transaction:
    return Transaction(Address(sender, []), [Address(r, []) for r in rcpts], id="tx-test")


CONTENT = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: in the queue\r\n\r\nthe body\r\n"
HEADER_SIZE = CONTENT.index(b"\r\n\r\n") + 4


async def seed(url: str) -> dict[str, str]:
    """Four messages, one per state; returns their queue ids by state.

    - pending: 10 minutes old, a@example.net to b@example.org, not tried yet;
    - deferred: 3 hours old, a@example.net to c@example.com (451, 2 attempts, next in an hour)
      and d@example.org (delivered);
    - bounced: 2 days old, the null sender to e@example.com (550);
    - held: 1 hour old, f@example.net to g@example.org, held ("spam run").
    """
    store = Store(StoreSettings(url=url))
    await store.open()
    now = time.time()
    ids: dict[str, str] = {}
    plan = {
        "pending": ("a@example.net", ["b@example.org"], 600.0),
        "deferred": ("a@example.net", ["c@example.com", "d@example.org"], 3 * HOUR),
        "bounced": ("", ["e@example.com"], 48 * HOUR),
        "held": ("f@example.net", ["g@example.org"], HOUR),
    }
    try:
        for state, (sender, rcpts, age) in plan.items():
            new = NewMessage.build(_transaction(sender, rcpts), CONTENT, HEADER_SIZE, "seed")
            new.message["created"] = now - age
            ids[state] = new.id
            await store.transaction(functools.partial(_insert, new=new))

        async def states(conn: AsyncConnection) -> None:
            await _rcpt(conn, ids["deferred"], 0, "deferred", 2, now + HOUR, "451 4.4.1 No answer")
            await _rcpt(conn, ids["deferred"], 1, "delivered", 1, None, "250 2.0.0 Ok")
            await conn.execute(
                update(messages)
                .where(messages.c.id == ids["deferred"])
                .values(next_attempt=now + HOUR)
            )
            await _rcpt(conn, ids["bounced"], 0, "bounced", 1, None, "550 5.1.1 User unknown")
            await conn.execute(
                update(messages).where(messages.c.id == ids["bounced"]).values(next_attempt=None)
            )
            await conn.execute(
                update(messages)
                .where(messages.c.id == ids["held"])
                .values(held_since=now - 60, held_reason="spam run")
            )

        await store.transaction(states)
    finally:
        await store.close()
    return ids


async def _insert(conn: AsyncConnection, new: NewMessage) -> None:
    for table, rows in new.rows().tables:
        await conn.execute(table.insert(), rows)


async def _rcpt(
    conn: AsyncConnection,
    queue_id: str,
    position: int,
    state: str,
    attempts: int,
    next_attempt: float | None,
    reply: str,
) -> None:
    await conn.execute(
        update(recipients)
        .where(recipients.c.message_id == queue_id, recipients.c.position == position)
        .values(state=state, attempts=attempts, next_attempt=next_attempt, last_reply=reply)
    )


@pytest.fixture
def queue(store_url: str, tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """(config dir, queue ids by state, store url) for a seeded store."""
    ids = asyncio.run(seed(store_url))
    config = write_config(tmp_path / "conf", store_url, f"127.0.0.1:{free_port()}")
    return config, ids, store_url


def mailgate(capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> tuple[int, str]:
    """Run ``mailgate ARGS`` in this process; (exit status, stdout). stderr goes to stdout's
    end after a line ``--- stderr``, so a test sees both."""
    import io
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    finally:
        sys.stdin = old
    out = capsys.readouterr()
    return status, out.out + (f"--- stderr\n{out.err}" if out.err else "")


def rows(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    return asyncio.run(store_rows(url))


def by_id(url: str) -> dict[str, dict[str, object]]:
    return {str(m["id"]): m for m in rows(url)[0]}


# -- list -----------------------------------------------------------------------------------------


def test_list_shows_every_message_with_its_recipients_as_a_table(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "list", "--config", str(config))
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["QUEUE", "ID", "STATE", "AGE", "SIZE", "SENDER"]
    # Oldest first: bounced (2 days), deferred (3 h), held (1 h), pending (10 min).
    heads = [line for line in lines if re.match(r"[0-9A-F]{21} ", line)]
    assert [h.split()[0] for h in heads] == [
        ids["bounced"],
        ids["deferred"],
        ids["held"],
        ids["pending"],
    ]
    size = f"{len(CONTENT)} B"
    assert re.match(rf"{ids['bounced']}  bounced\s+2d00h\s+{size}  <> \(null sender\)$", heads[0])
    assert re.match(rf"{ids['deferred']}  deferred\s+3h00m\s+{size}  <a@example.net>$", heads[1])
    assert re.match(rf"{ids['pending']}  pending\s+10m\s+{size}  <a@example.net>$", heads[3])
    text = "\n".join(lines)
    assert "    bounced   e@example.com  (1 attempt: 550 5.1.1 User unknown)" in text
    assert re.search(
        r"    deferred  c@example.com  \(2 attempts, next in (59m|1h00m): 451 4.4.1 No answer\)",
        text,
    )
    assert "    delivered d@example.org  (1 attempt: 250 2.0.0 Ok)" in text
    assert "    pending   b@example.org  (due now)" in text
    assert re.search(r"    held 1m ago: spam run", text)
    assert lines[-1] == (
        f"4 messages, {len(CONTENT) * 4} B: 1 pending, 1 deferred, 1 bounced, 1 held"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--state", "pending"], ["pending"]),
        (["--state", "deferred"], ["deferred"]),
        (["--state", "bounced"], ["bounced"]),
        (["--state", "held"], ["held"]),
        (["--sender", "A@Example.NET"], ["deferred", "pending"]),
        (["--sender", ""], ["bounced"]),
        (["--recipient", "c@example.com"], ["deferred"]),
        (["--domain", "example.com"], ["bounced", "deferred"]),
        (["--older-than", "2h"], ["bounced", "deferred"]),
        (["--newer-than", "1h30m"], ["held", "pending"]),
        (
            ["--older-than", "30m", "--newer-than", "1d", "--domain", "example.org"],
            ["deferred", "held"],
        ),
    ],
)
def test_list_filters(
    queue: tuple[Path, dict[str, str], str],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: list[str],
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "list", "--config", str(config), "--json", *args)
    assert status == 0, out
    found = [m["id"] for m in json.loads(out)["messages"]]
    by_state = {v: k for k, v in ids.items()}
    assert sorted(by_state[i] for i in found) == expected


def test_list_json_carries_the_envelope_and_each_recipient(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), "--json", ids["deferred"])
    assert status == 0
    (message,) = json.loads(out)["messages"]
    assert message["state"] == "deferred" and message["sender"] == "a@example.net"
    assert 3 * HOUR - 60 < message["age"] < 3 * HOUR + 60
    assert [(r["address"], r["state"], r["attempts"]) for r in message["recipients"]] == [
        ("c@example.com", "deferred", 2),
        ("d@example.org", "delivered", 1),
    ]
    assert message["in_flight"] is False and message["held_since"] is None


def test_nothing_matched_exits_1_and_says_so(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = queue
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), "--sender", "x@nowhere.test")
    assert (status, out.strip()) == (1, "No queued message matches.")
    status, out = mailgate(capsys, "queue", "retry", "-c", str(config), "--domain", "nowhere.test")
    assert (status, out.strip()) == (1, "No queued message matches.")


def test_usage_errors_exit_2(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = queue
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), "--older-than", "2 days")
    assert status == 2 and "expected an age like 30m, 2h, 3d or 1h30m" in out
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), "--state", "lost")
    assert status == 2 and "invalid choice: 'lost'" in out
    # A write command with no selection at all must say what it wants, not act on everything.
    status, out = mailgate(capsys, "queue", "delete", "-c", str(config), "--yes")
    assert status == 2 and "give queue ids, filters" in out
    assert len(rows(queue[2])[0]) == 4


def test_a_missing_sqlite_store_is_an_error_not_a_new_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "mailgate.db"
    config = write_config(tmp_path / "conf", f"sqlite:///{path}", "127.0.0.1:25")
    status, out = mailgate(capsys, "queue", "list", "-c", str(config))
    assert status == 1 and f"no such file {path}" in out
    assert not path.parent.exists()


# -- show -----------------------------------------------------------------------------------------


def test_show_gives_envelope_recipients_and_headers(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "show", "-c", str(config), ids["deferred"][:14])
    assert status == 0, out
    assert f"Queue ID:      {ids['deferred']}" in out
    assert "State:         deferred" in out
    assert re.search(
        r"Accepted:      \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(3h00m ago\) by node seed", out
    )
    assert "Sender:        <a@example.net>" in out
    assert re.search(r"Next attempt:  .* \(in (59m|1h00m)\)", out)
    assert "  deferred  <c@example.com>\n      attempts: 2\n" in out
    assert "      last reply: 451 4.4.1 No answer" in out
    assert "  delivered <d@example.org>" in out
    assert out.rstrip().endswith(
        "Headers:\nFrom: a@example.net\nTo: b@example.org\nSubject: in the queue"
    )
    assert "the body" not in out
    status, out = mailgate(capsys, "queue", "show", "-c", str(config), ids["deferred"], "--body")
    assert out.rstrip().endswith(
        "Message:\nFrom: a@example.net\nTo: b@example.org\nSubject: in the queue\n\nthe body"
    )


def test_show_held_and_unknown(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "show", "-c", str(config), ids["held"])
    assert status == 0 and re.search(r"Held:          since .* \(1m ago\): spam run", out)
    status, out = mailgate(capsys, "queue", "show", "-c", str(config), "0123456789ABCDEF01234")
    assert status == 1 and "no such message in the queue" in out
    status, out = mailgate(capsys, "queue", "show", "-c", str(config), ids["held"][:1], "--json")
    assert status == 1 and "names 4 messages" in out  # the same first digit: a prefix of all


# -- acting ---------------------------------------------------------------------------------------


def test_retry_makes_deferred_due_now_and_leaves_held_and_bounced(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue
    before = time.time()
    status, out = mailgate(capsys, "queue", "retry", "-c", str(config), "--all")
    assert status == 0, out
    assert f"{ids['deferred']}  due now" in out and f"{ids['pending']}  due now" in out
    assert f"{ids['held']}  not due now: held: due once released" in out
    assert f"{ids['bounced']}  not due now: nothing left to try (bounced recipients only)" in out
    assert out.splitlines()[-1] == "2 messages due now, 2 left as they were."
    msgs = by_id(url)
    assert float(str(msgs[ids["deferred"]]["next_attempt"])) <= time.time()
    assert float(str(msgs[ids["deferred"]]["next_attempt"])) >= before - 1
    assert msgs[ids["bounced"]]["next_attempt"] is None
    _, rcpts = rows(url)
    delivered = [r for r in rcpts if r["state"] == "delivered"]
    assert delivered[0]["next_attempt"] is None  # a delivered recipient is not sent again


def test_flush_is_retry_of_everything(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, _ = queue
    status, out = mailgate(capsys, "queue", "flush", "-c", str(config), "--json")
    assert status == 0
    document = json.loads(out)
    assert sorted(document["changed"]) == sorted([ids["deferred"], ids["pending"]])
    assert document["woken"] == []  # no server runs with this configuration


def test_hold_then_release(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue
    status, out = mailgate(
        capsys, "queue", "hold", "-c", str(config), "--domain", "example.org", "--reason", "check"
    )
    assert status == 0, out
    assert sorted(out.splitlines()) == sorted(
        [
            f"{ids['deferred']}  held",
            f"{ids['pending']}  held",
            f"{ids['held']}  not held: already held",
            "2 messages held, 1 left as they were.",
        ]
    )
    msgs = by_id(url)
    assert msgs[ids["pending"]]["held_reason"] == "check"
    assert msgs[ids["held"]]["held_reason"] == "spam run"
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), "--state", "held")
    assert out.splitlines()[-1].endswith(": 3 held")
    status, out = mailgate(capsys, "queue", "release", "-c", str(config), "--state", "held")
    assert status == 0 and out.splitlines()[-1] == "3 messages released."
    assert all(m["held_since"] is None and m["held_reason"] is None for m in rows(url)[0])


def test_a_held_message_is_not_claimed_and_a_released_one_is(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue

    async def claim() -> list[str]:
        store = Store(StoreSettings(url=url))
        await store.open()
        try:
            claimed = await store.transaction(lambda conn: records.claim(conn, "n", 60.0, 10))
            await store.transaction(lambda conn: records.release_leases(conn, "n"))
        finally:
            await store.close()
        return [q.id for q in claimed]

    mailgate(capsys, "queue", "retry", "-c", str(config), "--all")
    assert sorted(asyncio.run(claim())) == sorted([ids["pending"], ids["deferred"]])
    mailgate(capsys, "queue", "hold", "-c", str(config), ids["pending"])
    assert asyncio.run(claim()) == [ids["deferred"]]
    mailgate(capsys, "queue", "release", "-c", str(config), "--all")
    assert ids["held"] in asyncio.run(claim())  # due all along: released, it is taken at once


def test_delete_asks_first(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue
    status, out = mailgate(capsys, "queue", "delete", "-c", str(config), "--state", "bounced")
    assert status == 1  # no answer (stdin empty): nothing deleted
    assert "Delete 1 message? [y/N]" in out and "nothing deleted" in out
    assert ids["bounced"] in by_id(url)
    status, out = mailgate(
        capsys, "queue", "delete", "-c", str(config), "--state", "bounced", stdin="y\n"
    )
    assert status == 0 and f"{ids['bounced']}  deleted" in out
    msgs, rcpts = rows(url)
    assert ids["bounced"] not in {m["id"] for m in msgs}
    assert "e@example.com" not in {r["address"] for r in rcpts}  # its recipients went with it


def test_delete_leaves_a_message_in_flight_unless_forced(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue

    async def lease() -> None:
        store = Store(StoreSettings(url=url))
        await store.open()
        try:
            await store.transaction(
                lambda conn: conn.execute(
                    update(messages)
                    .where(messages.c.id == ids["pending"])
                    .values(lease_owner="mx1", lease_until=time.time() + 300)
                )
            )
        finally:
            await store.close()

    asyncio.run(lease())
    status, out = mailgate(capsys, "queue", "list", "-c", str(config), ids["pending"])
    assert "[being delivered by mx1]" in out and out.splitlines()[-1].endswith(
        "; 1 being delivered now"
    )
    status, out = mailgate(capsys, "queue", "delete", "-c", str(config), "--yes", "--all")
    assert status == 0
    assert f"{ids['pending']}  not deleted: in flight (being delivered now)" in out
    assert out.splitlines()[-1] == "3 messages deleted, 1 left as they were."
    assert list(by_id(url)) == [ids["pending"]]
    status, out = mailgate(capsys, "queue", "delete", "-c", str(config), "-y", "--force", "--all")
    assert status == 0 and rows(url) == ([], [])


def test_the_store_is_read_with_select_only_by_list_and_show(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ids, url = queue
    before = rows(url)
    mailgate(capsys, "queue", "list", "-c", str(config))
    mailgate(capsys, "queue", "show", "-c", str(config), ids["pending"], "--body")
    assert rows(url) == before


def test_a_pid_file_naming_another_process_is_not_signalled(
    queue: tuple[Path, dict[str, str], str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, _, _ = queue
    other = subprocess.Popen(["sleep", "60"])  # SIGUSR1 would end it
    try:
        pid_file = tmp_path / "stale.pid"
        pid_file.write_text(f"{other.pid}\n")
        status, out = mailgate(
            capsys, "queue", "flush", "-c", str(config), "--pid-file", str(pid_file)
        )
        assert status == 0 and "SIGUSR1" not in out
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
