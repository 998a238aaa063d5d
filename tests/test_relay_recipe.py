"""No open relay through the documented Postfix set-up (docs/postfix.md, before-queue proxy).

A real Postfix runs with Postfix's defaults (``$myhostname`` and ``$mydomain`` in
``mydestination``, the percent hack, bang paths and dequoting on) plus exactly the lines of the
recipe, read from docs/postfix.md. An outside client sends every routing form through mailgate;
the test reads the replies, Postfix's log and the smtp-sink behind Postfix. A client that may
relay sends one message to a remote domain first, so the sink is known to work.

Each layer is tried alone: mailgate's routing check with the old, trusting Postfix listener, and
the recipe's Postfix (XCLIENT, routing off) with mailgate's check switched off. With neither, the
same test sees the relay, which shows that it can.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.app import App
from tests.peers.postfix import Postfix, PostfixFactory
from tests.peers.smtp_sink import SmtpSink

RECIPE = Path(__file__).parents[1] / "docs" / "postfix.md"
OUTSIDE = "127.0.0.2"
TRUSTED = "127.0.0.1"
NETWORKS = "127.0.0.1/32"  # what may relay, in mailgate and (as the recipe says) in Postfix

ROUTING_FORMS = [
    "victim%evil.test@mx.example.org",
    "victim%evil.test@example.org",
    "VICTIM%EVIL.TEST@MX.EXAMPLE.ORG",
    "victim%evil.test@mx.example.org.",
    "victim%evil.test%mx.example.org@mx.example.org",
    "victim%evil.test@[127.0.0.1]",
    '"victim@evil.test"@example.org',
    '"victim@evil.test"@mx.example.org',
    '"victim%evil.test"@example.org',
    '"evil.test!victim"@example.org',
    "evil.test!victim@mx.example.org",
    "victim@evil.test@example.org",
    "victim\\@evil.test@example.org",
    "victim(x)%evil.test@example.org",
    "victim@evil.test(x)@example.org",
    "victim@evil.test%mx.example.org",
    "@mx.example.org:victim@evil.test",
    "victim@evil.test@",
    "victim%evil.test",
    "evil.test!victim",
]

SITE = {
    "myhostname": "mx.example.org",
    "mydomain": "example.org",
    "mydestination": "$myhostname, localhost.$mydomain, localhost, $mydomain",
    "local_transport": "discard:delivered locally",
}
"""A site that receives for example.org; local mail is discarded, with a log line."""

OLD_LISTENER = {
    "mynetworks": "127.0.0.0/8",
    "smtpd_authorized_xclient_hosts": "",
    "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
    "smtpd_relay_restrictions": "permit_mynetworks,reject",
}
"""The listener docs/postfix.md described before: it trusts everything mailgate sends."""


def recipe_block(name: str) -> list[str]:
    """The lines of the code block after ``<!-- recipe: NAME`` in docs/postfix.md."""
    text = RECIPE.read_text()
    start = text.index(f"<!-- recipe: {name}")
    block = text[text.index("```", start) + 3 :]
    return block[: block.index("```")].strip("\n").splitlines()


def recipe_master_options() -> dict[str, str]:
    """The ``-o name=value`` options of the recipe's private smtpd."""
    options = {}
    for line in recipe_block("master.cf"):
        if line.strip().startswith("-o "):
            name, _, value = line.strip()[3:].partition("=")
            options[name.strip()] = value.strip()
    return options


def recipe_main_cf() -> dict[str, str]:
    """The recipe's main.cf settings (``mynetworks`` as this test's networks)."""
    params = {}
    for line in recipe_block("main.cf"):
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            params[name.strip()] = value.strip()
    assert "mynetworks" in params
    params["mynetworks"] = NETWORKS
    return params


@dataclass
class Site:
    """mailgate in front of a Postfix that relays non-local mail to `sink`."""

    app: App
    postfix: Postfix
    sink: SmtpSink

    def send(self, source: str, rcpt: str) -> tuple[int, str]:
        """One transaction from `source` to `rcpt`, sent as written; the RCPT reply, and the
        end-of-data reply when RCPT was accepted."""
        with smtplib.SMTP("127.0.0.2", self.app.ports[0], source_address=(source, 0)) as client:
            client.ehlo("client.example.net")
            assert client.docmd("MAIL", "FROM:<a@example.net>")[0] == 250
            code, text = client.docmd("RCPT", f"TO:<{rcpt}>")
            if code != 250:
                return code, text.decode()
            data_code, data_text = client.data(
                b"From: a@example.net\r\nSubject: routing\r\n\r\nhello\r\n"
            )
            return data_code, data_text.decode()

    def relayed_recipients(self) -> set[str]:
        """Recipients Postfix sent to the sink (its log) or the sink received (its dumps)."""
        self.wait_for_empty_queue()
        logged = re.findall(
            r"postfix/smtp\[\d+\]: \w+: to=<([^>]*)>.*relay=127\.0\.0\.1", self.postfix.maillog()
        )
        received = [r for m in self.sink.messages() for r in m.rcpts]
        return set(logged) | set(received)

    def wait_for_empty_queue(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.postfix.queue():
            assert time.monotonic() < deadline, self.postfix.queue()
            time.sleep(0.1)


SiteFactory = Callable[..., "asyncio.Future[Site]"]


@pytest.fixture
async def site_factory(
    postfix_factory: PostfixFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> AsyncIterator[Callable[[dict[str, str], dict[str, str], str], asyncio.Future[Site]]]:
    apps: list[App] = []

    async def make(main_cf: dict[str, str], listener: dict[str, str], mailgate: str) -> Site:
        postfix = postfix_factory(relay=smtp_sink, main_cf={**SITE, **main_cf}, start=False)
        port = postfix.add_listener(options=listener)
        postfix.start()
        (tmp_path / "mailgate.toml").write_text(
            '[relay_control]\ndomains = ["example.org", ".example.org"]\n'
            f'networks = ["{NETWORKS}"]\n{mailgate}'
        )
        app = App(tmp_path, listen="127.0.0.2:0", relay=f"127.0.0.1:{port}", configure_logs=False)
        await app.start()
        apps.append(app)
        site = Site(app, postfix, smtp_sink)
        # The control: a client that may relay reaches a remote domain through both.
        assert (await asyncio.to_thread(site.send, TRUSTED, "friend@elsewhere.test"))[0] == 250
        return site

    yield make  # type: ignore[misc]
    for app in apps:
        await app.stop()


async def send_all(site: Site) -> dict[str, tuple[int, str]]:
    return {rcpt: await asyncio.to_thread(site.send, OUTSIDE, rcpt) for rcpt in ROUTING_FORMS}


async def test_the_recipe_with_mailgate_defaults_relays_nothing(site_factory: SiteFactory) -> None:
    site = await site_factory(recipe_main_cf(), recipe_master_options(), "")
    replies = await send_all(site)
    assert {r for r, (c, _) in replies.items() if c != 554} == set(), replies
    # mailgate's own refusal (Postfix's names the address: "<...>: Relay access denied").
    assert {text for _, text in replies.values()} == {"5.7.1 Relay access denied"}
    assert site.relayed_recipients() == {"friend@elsewhere.test"}
    assert "evil.test" not in site.postfix.maillog()


async def test_mailgate_alone_holds_in_front_of_a_trusting_postfix(
    site_factory: SiteFactory,
) -> None:
    site = await site_factory({}, OLD_LISTENER, "")
    replies = await send_all(site)
    assert {r for r, (c, _) in replies.items() if c != 554} == set(), replies
    assert {text for _, text in replies.values()} == {"5.7.1 Relay access denied"}
    assert site.relayed_recipients() == {"friend@elsewhere.test"}
    assert "evil.test" not in site.postfix.maillog()


async def test_the_recipes_postfix_alone_holds_behind_a_permissive_mailgate(
    site_factory: SiteFactory,
) -> None:
    site = await site_factory(
        recipe_main_cf(), recipe_master_options(), "allow_untrusted_routing = true\n"
    )
    replies = await send_all(site)
    # What mailgate let through, Postfix either refused (judging the real client through
    # XCLIENT) or delivered locally (the percent hack and bang paths are off).
    passed = {r for r, (c, _) in replies.items() if c == 250}
    assert site.relayed_recipients() == {"friend@elsewhere.test"}
    assert any(text.endswith(">: Relay access denied") for _, text in replies.values())
    # Through XCLIENT, Postfix refused the real client, not mailgate's 127.0.0.1.
    assert re.search(r"reject: RCPT from unknown\[127\.0\.0\.2\]: 554 ", site.postfix.maillog())
    delivered_locally = set(re.findall(r"to=<([^>]*)>, relay=none", site.postfix.maillog()))
    assert passed <= delivered_locally, (passed, delivered_locally)


async def test_with_neither_layer_the_test_sees_the_open_relay(site_factory: SiteFactory) -> None:
    site = await site_factory({}, OLD_LISTENER, "allow_untrusted_routing = true\n")
    await send_all(site)
    relayed = site.relayed_recipients()
    assert "victim@evil.test" in relayed, relayed
