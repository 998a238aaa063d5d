"""contrib/postfix/queue.md, both directions, with a real Postfix and a real mailgate:

(a) mailgate's queue in front of Postfix: a client sends to mailgate; mailgate queues and
    delivers to the recipe's Postfix listener; Postfix relays to smtp-sink.
(b) Postfix relaying to a mailgate queue: a client sends to Postfix; Postfix's relayhost is
    mailgate; mailgate queues and delivers to the "smarthost", an smtp-sink.

Each uses exactly the recipe's blocks; only the ports, the store's path and the smarthost are
replaced by the test's own.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.app import App
from tests.apps import started_apps
from tests.peers.ports import free_port
from tests.peers.postfix import PostfixFactory
from tests.peers.smtp_sink import SmtpSink
from tests.recipes import recipe_block as read_recipe_block

RECIPE = Path(__file__).parents[1] / "contrib" / "postfix" / "queue.md"
STORE = "sqlite:////var/lib/mailgate/mailgate.db"


def recipe_block(name: str) -> str:
    """The code block after ``<!-- recipe: NAME -->`` in the recipe."""
    return read_recipe_block(RECIPE, name)


def replaced(text: str, replacements: dict[str, str]) -> str:
    """`text` with each key replaced by its value; each key must be there."""
    for old, new in replacements.items():
        assert old in text, f"the recipe no longer has {old!r}"
        text = text.replace(old, new)
    return text


def master_cf_options(block: str) -> tuple[str, dict[str, str]]:
    """The service's ``host:port`` and its ``-o name=value`` options."""
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    service = lines[0].split()[0]
    assert lines[0].split()[1:] == ["inet", "n", "-", "n", "-", "-", "smtpd"], lines[0]
    options = {}
    for line in lines[1:]:
        assert line.strip().startswith("-o "), line
        name, _, value = line.strip()[3:].partition("=")
        options[name.strip()] = value.strip()
    return service, options


def main_cf(block: str) -> dict[str, str]:
    params = {}
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            params[name.strip()] = value.strip()
    return params


def send(port: int, rcpt: str, message_id: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("someone@example.net")
        code, text = client.rcpt(rcpt)
        assert code == 250, (code, text)
        code, reply = client.data(
            f"From: someone@example.net\r\nTo: {rcpt}\r\nSubject: recipe\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nthrough the queue\r\n".encode()
        )
        return code, reply.decode()


MailgateStarter = Callable[[str], Awaitable[App]]
"""``await start_mailgate(TOML)``: a started `App` with that mailgate.toml."""


@pytest.fixture
async def start_mailgate(tmp_path: Path) -> AsyncIterator[MailgateStarter]:
    async with started_apps() as apps:

        async def start(toml: str) -> App:
            directory = tmp_path / f"mailgate{len(apps)}"
            directory.mkdir()
            (directory / "mailgate.toml").write_text(toml)
            return await apps.start(directory)

        yield start


async def test_a_mailgate_queue_in_front_of_postfix(
    postfix_factory: PostfixFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    start_mailgate: MailgateStarter,
) -> None:
    service, options = master_cf_options(recipe_block("a-master.cf"))
    assert service == "127.0.0.1:10026"
    assert options["content_filter"] == "" and options["smtpd_milters"] == ""
    postfix = postfix_factory(relay=smtp_sink, start=False)
    port = postfix.add_listener(options=options)
    postfix.start()
    listen = free_port()
    toml = replaced(
        recipe_block("a-mailgate.toml"),
        {
            "0.0.0.0:25": f"127.0.0.1:{listen}",
            "127.0.0.1:10026": f"127.0.0.1:{port}",
            STORE: f"sqlite:///{tmp_path}/a/mailgate.db",
            # So that 127.0.0.2 can play a client from outside.
            '"127.0.0.0/8"': '"127.0.0.1/32"',
        },
    )
    await start_mailgate(toml)
    code, reply = await asyncio.to_thread(send, listen, "postmaster@example.org", "a1@recipe.test")
    assert code == 250 and re.search(r"queued as [0-9A-F]{21}$", reply), reply
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30)
    assert got.header("Message-ID") == "<a1@recipe.test>"
    assert got.rcpts == ("postmaster@example.org",)
    # It went through the recipe's listener: Postfix logged it under the recipe's name.
    postfix.wait_for_log(
        r"postfix/from-mailgate/smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\]"
    )
    # mailgate refuses what may not be relayed before anything is queued.
    assert await asyncio.to_thread(outside_rcpt, listen, "victim@elsewhere.test") == 554


def outside_rcpt(port: int, rcpt: str) -> int:
    """The RCPT reply code to a client outside `[relay_control] networks`."""
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.2", 0), timeout=30) as client:
        client.ehlo("outside.example.net")
        client.mail("someone@example.net")
        return client.rcpt(rcpt)[0]


async def test_b_postfix_relaying_to_a_mailgate_queue(
    postfix_factory: PostfixFactory,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    start_mailgate: MailgateStarter,
) -> None:
    listen = free_port()
    toml = replaced(
        recipe_block("b-mailgate.toml"),
        {
            "127.0.0.1:10025": f"127.0.0.1:{listen}",
            "smarthost.example.net:25": f"127.0.0.1:{smtp_sink.port}",
            STORE: f"sqlite:///{tmp_path}/b/mailgate.db",
        },
    )
    await start_mailgate(toml)
    params = main_cf(recipe_block("b-main.cf"))
    assert params == {"relayhost": "[127.0.0.1]:10025"}
    params["relayhost"] = f"[127.0.0.1]:{listen}"
    # (The test instance's own relayhost is mailgate too; the recipe's line is what it runs.)
    postfix = postfix_factory(relay=("127.0.0.1", listen), main_cf=params)
    with smtplib.SMTP(postfix.host, postfix.port, timeout=30) as client:
        client.sendmail(
            "someone@example.net",
            ["friend@example.net"],
            b"From: someone@example.net\r\nSubject: recipe b\r\n"
            b"Message-ID: <b1@recipe.test>\r\n\r\nout through mailgate\r\n",
        )
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30)
    assert got.header("Message-ID") == "<b1@recipe.test>"
    assert got.rcpts == ("friend@example.net",)
    # Postfix handed it to mailgate, which said it queued it.
    match = await asyncio.to_thread(
        postfix.wait_for_log,
        rf"to=<friend@example\.net>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{listen}, .*status=sent "
        r"\(250 2\.0\.0 Ok: queued as ([0-9A-F]{21})\)",
    )
    deadline = time.monotonic() + 10
    while postfix.queue():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert match.group(1)
