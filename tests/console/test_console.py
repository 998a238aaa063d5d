"""The console in a real headless Chromium: sign in, find a held message, release it and see
it arrive; a message carrying scripts shows as text and runs nothing; a cross-site POST is
refused; sign-in attempts are limited. Screenshots of each page go to docs/console/."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from mailgate.app import App
from tests.console.conftest import LOGIN, PASSWORD
from tests.peers.smtp_sink import SmtpSink

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
"""Where `MAILGATE_SCREENSHOTS=1` puts the pages (the ones docs/console.md shows)."""
HOSTILE = (
    "From: Mallory <mallory@example.net>\r\nTo: bob@example.org\r\n"
    "Subject: please hold <script>alert('subject')</script>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
    "--b\r\nContent-Type: text/plain\r\n\r\nHello Bob, click below.\r\n"
    "--b\r\nContent-Type: text/html\r\n\r\n"
    "<p onmouseover=\"alert('html')\">Hi</p><script>alert('body')</script>"
    "<a id=\"bad\" href=\"javascript:alert('link')\">click</a><img src=x onerror=alert('img')>\r\n"
    "--b--\r\n"
)


def send(port: int, message: str, sender: str = "mallory@example.net") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail(sender)
        client.rcpt("bob@example.org")
        _, text = client.data(message.encode())
        return text.decode()


def console_url(app: App, path: str = "/") -> str:
    assert app.console is not None
    return f"http://127.0.0.1:{app.console.port}{path}"


def gone(element: WebElement) -> Callable[[webdriver.Chrome], bool]:
    """True once `element` has left the page (the click led to the next one). Selenium's
    `staleness_of` knows only the stale-element error; Chromium, caught mid-navigation, may
    answer "Node with given id does not belong to the document" instead, which means the same."""

    def left(_: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return left


def sign_in(browser: webdriver.Chrome, app: App, password: str = PASSWORD) -> None:
    browser.get(console_url(app, "/sign-in"))
    browser.find_element(By.ID, "login").send_keys(LOGIN)
    browser.find_element(By.ID, "password").send_keys(password)
    form = browser.find_element(By.TAG_NAME, "form")
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 15).until(gone(form))


def click_and_wait(browser: webdriver.Chrome, element_id: str) -> None:
    """Click, then wait for the page the click leads to."""
    page = browser.find_element(By.TAG_NAME, "main")
    browser.find_element(By.ID, element_id).click()
    WebDriverWait(browser, 15).until(gone(page))


def no_alert(browser: webdriver.Chrome) -> None:
    try:
        text = browser.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail(f"a script ran: alert({text!r})")


def shot(browser: webdriver.Chrome, name: str) -> None:
    """A screenshot of the page: into docs/console with MAILGATE_SCREENSHOTS=1, else beside
    the browser's profile (so a test run leaves the tree as it was)."""
    folder = (
        DOCS_SCREENSHOTS
        if os.environ.get("MAILGATE_SCREENSHOTS")
        else Path(browser.capabilities["chrome"]["userDataDir"]).parent
    )
    folder.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(folder / f"{name}.png"))


async def test_sign_in_find_release_and_it_arrives(
    console_node: App, browser: webdriver.Chrome, smtp_sink: SmtpSink
) -> None:
    app = console_node
    held = await asyncio.to_thread(send, app.ports[0], HOSTILE)
    held_id = held.rpartition(" ")[2]
    await asyncio.to_thread(send, app.ports[0], "Subject: fine\r\n\r\nhi\r\n", "ok@example.net")

    def in_browser() -> None:
        browser.get(console_url(app))
        assert browser.current_url.endswith("/sign-in"), "everything is behind the sign-in"
        shot(browser, "sign-in")
        sign_in(browser, app)
        assert browser.current_url == console_url(app)
        assert browser.find_element(By.ID, "held-count").text == "1"
        shot(browser, "overview")
        browser.get(console_url(app, "/quarantine"))
        browser.find_element(By.NAME, "q").send_keys("mallory")
        click_and_wait(browser, "search")
        rows = browser.find_elements(By.CSS_SELECTOR, "#held tr")
        assert len(rows) == 2 and held_id in rows[1].text
        shot(browser, "quarantine")
        browser.get(console_url(app, f"/quarantine/{held_id}"))
        no_alert(browser)
        shot(browser, "held-message")
        click_and_wait(browser, "release")
        assert f"{held_id}: released via relay" in browser.find_element(By.ID, "notice").text

    await asyncio.to_thread(in_browser)
    arrived = await asyncio.to_thread(smtp_sink.wait_for_messages, 2)
    subjects = sorted(str(m.header("Subject")) for m in arrived)
    assert subjects == ["fine", "please hold <script>alert('subject')</script>"]


async def test_scripts_in_a_message_show_as_text_and_run_nothing(
    console_node: App, browser: webdriver.Chrome
) -> None:
    app = console_node
    held_id = (await asyncio.to_thread(send, app.ports[0], HOSTILE)).rpartition(" ")[2]

    def in_browser() -> None:
        sign_in(browser, app)
        browser.get(console_url(app, "/quarantine"))
        no_alert(browser)
        assert (
            "please hold <script>alert('subject')</script>"
            in browser.find_element(By.ID, "held").text
        )
        browser.get(console_url(app, f"/quarantine/{held_id}"))
        no_alert(browser)
        page = browser.find_element(By.TAG_NAME, "main").text
        assert "<script>alert('body')</script>" in page, "the HTML is shown as its source"
        assert "javascript:alert('link')" in page
        # Nothing of the message became an element: no script, no link, no image.
        assert browser.find_elements(By.TAG_NAME, "script") == []
        assert browser.find_elements(By.ID, "bad") == []
        assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
        for element in browser.find_elements(By.CSS_SELECTOR, "pre"):
            element.click()
        no_alert(browser)

    await asyncio.to_thread(in_browser)


async def test_a_cross_site_post_is_refused(console_node: App, browser: webdriver.Chrome) -> None:
    app = console_node
    held_id = (await asyncio.to_thread(send, app.ports[0], HOSTILE)).rpartition(" ")[2]
    target = console_url(app, f"/quarantine/{held_id}/delete")
    origin = console_url(app, "").rstrip("/")

    def in_browser() -> tuple[str, str, dict[str, str]]:
        sign_in(browser, app)
        cookie = {c["name"]: c["value"] for c in browser.get_cookies()}
        # A page of another origin (a data: URL here) posts a form to the console: the
        # browser does not send the SameSite=Strict session, so the console asks to sign in.
        form = (
            f"<form id=f method=post action='{target}'><input name=csrf value=guess></form>"
            "<script>document.getElementById('f').submit()</script>"
        )
        browser.get("data:text/html;charset=utf-8," + urllib.parse.quote(form))
        WebDriverWait(browser, 15).until(lambda b: b.current_url.startswith("http://127.0.0.1"))
        return browser.current_url, browser.find_element(By.TAG_NAME, "body").text, cookie

    landed, body, cookie = await asyncio.to_thread(in_browser)
    assert landed.endswith("/sign-in") or "cross-site request refused" in body

    def post(csrf: str, source: str) -> int:
        request = urllib.request.Request(
            target,
            data=f"csrf={csrf}".encode(),
            method="POST",
            headers={"Cookie": f"mailgate_console={cookie['mailgate_console']}", "Origin": source},
        )
        try:
            return int(urllib.request.urlopen(request).status)
        except urllib.error.HTTPError as exc:
            return exc.code

    # With the session itself (a stolen cookie, a browser without SameSite): a wrong token,
    # or another site as origin, is refused all the same.
    assert await asyncio.to_thread(post, "guess", origin) == 403
    assert await asyncio.to_thread(post, "guess", "https://evil.example") == 403
    from tests.quarantine.test_quarantine import held_rows

    rows = await held_rows(f"sqlite:///{Path(str(app.directory)).parent}/store/mailgate.db")
    assert [r.id for r in rows] == [held_id], "nothing was deleted"
    # The control: the page's own token, from the console's own origin, does delete it.
    page = urllib.request.Request(
        console_url(app, f"/quarantine/{held_id}"),
        headers={"Cookie": f"mailgate_console={cookie['mailgate_console']}"},
    )
    html = (await asyncio.to_thread(lambda: urllib.request.urlopen(page).read())).decode()
    token = re.search(r'name="csrf" value="([^"]+)"', html)
    assert token is not None
    assert await asyncio.to_thread(post, token.group(1), origin) == 200  # after the redirect
    assert await held_rows(f"sqlite:///{Path(str(app.directory)).parent}/store/mailgate.db") == []


async def test_sign_in_attempts_are_limited_and_pages_need_a_session(
    console_node: App, browser: webdriver.Chrome
) -> None:
    app = console_node
    for path in ("/", "/quarantine", "/queue"):
        response = await asyncio.to_thread(urllib.request.urlopen, console_url(app, path))
        assert response.url.endswith("/sign-in"), path

    def in_browser() -> list[str]:
        errors = []
        for _ in range(6):
            sign_in(browser, app, password="wrong")
            errors.append(browser.find_element(By.ID, "error").text)
        sign_in(browser, app)  # the right password, too late
        errors.append(browser.find_element(By.ID, "error").text)
        return errors

    errors = await asyncio.to_thread(in_browser)
    assert errors[:5] == ["Wrong login or password."] * 5
    assert errors[5:] == ["Too many failed sign-ins; wait a while."] * 2
