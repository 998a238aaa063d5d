"""The console's pages: a Starlette application over the running node.

Every page but ``/health`` and the sign-in needs a session; every POST needs the session's
CSRF token and, when the browser says where it comes from (``Origin``), this site as origin.
No page runs a script: the Content-Security-Policy allows none, and a message's HTML is shown
as its source text, escaped, never rendered.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from mailgate.console import views
from mailgate.console.activity import Activity
from mailgate.console.settings import ConsoleSettings
from mailgate.pipeline import AuthenticationUnavailable, Pipeline
from mailgate.session import Session

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on its own
    # form posts, and the origin check could not tell them from a cross-site one.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass(slots=True)
class Node:
    """What the pages read and act on: the running app's parts."""

    pipeline: Callable[[], Pipeline]
    activity: Activity
    quarantine: views.QuarantineView | None
    queue: views.QueueView | None
    node_name: str
    reports: views.ReportsView | None = None


class SignInLimit:
    """Failed sign-ins per client address in a sliding window (memory bounded by `max_keys`)."""

    def __init__(self, attempts: int, window: float, max_keys: int = 10_000) -> None:
        self.attempts, self.window, self.max_keys = attempts, window, max_keys
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, key: str, now: float) -> bool:
        failures = self._failures.get(key)
        if failures is None:
            return False
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return len(failures) >= self.attempts

    def failed(self, key: str, now: float) -> None:
        if key not in self._failures and len(self._failures) >= self.max_keys:
            self._failures.pop(next(iter(self._failures)))
        self._failures[key].append(now)


def build(settings: ConsoleSettings, node: Node) -> Starlette:
    """The console as an ASGI application."""
    # Every value is escaped, whatever the template: a message's text is somebody else's.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    limit = SignInLimit(settings.sign_in_attempts, settings.sign_in_window)
    secure = (
        settings.secure_cookies if settings.secure_cookies is not None else bool(settings.tls_cert)
    )

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            login=request.session.get("login"),
            csrf=request.session.get("csrf", ""),
            node=node.node_name,
            has_queue=node.queue is not None,
            has_reports=node.reports is not None,
            notice=request.query_params.get("notice", ""),
        )
        response: Response = templates.TemplateResponse(request, name, context, status_code=status)
        return response

    def signed_in(request: Request) -> str | None:
        login = request.session.get("login")
        expires = request.session.get("expires", 0)
        if not login or expires < time.time():
            request.session.clear()
            return None
        return str(login)

    def protected(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            login = signed_in(request)
            if login is None:
                return RedirectResponse("/sign-in", status_code=303)
            if request.method == "POST":
                form = await request.form()
                if not _same_origin(request) or not secrets.compare_digest(
                    str(form.get("csrf", "")), str(request.session.get("csrf", "-"))
                ):
                    return PlainTextResponse("cross-site request refused", status_code=403)
            return await handler(request, login)

        return wrapped

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def sign_in_form(request: Request) -> Response:
        return page(request, "sign_in.html")

    async def sign_in(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        if not _same_origin(request):
            return PlainTextResponse("cross-site request refused", status_code=403)
        if limit.blocked(client, now):
            return page(
                request, "sign_in.html", 429, error="Too many failed sign-ins; wait a while."
            )
        form = await request.form()
        login, password = str(form.get("login", "")), str(form.get("password", ""))
        allowed = not settings.logins or login in settings.logins
        try:
            ok = allowed and await node.pipeline().authenticate(
                Session(client, listener="console", ingress="console"), "PLAIN", login, password
            )
        except AuthenticationUnavailable:
            return page(
                request, "sign_in.html", 503, error="Sign-in is unavailable; try again later."
            )
        if not ok:
            limit.failed(client, now)
            return page(request, "sign_in.html", 401, error="Wrong login or password.")
        request.session.clear()
        request.session.update(
            login=login,
            csrf=secrets.token_urlsafe(32),
            expires=time.time() + settings.session_lifetime,
        )
        return RedirectResponse("/", status_code=303)

    async def sign_out(request: Request, login: str) -> Response:
        request.session.clear()
        return RedirectResponse("/sign-in", status_code=303)

    async def overview(request: Request, login: str) -> Response:
        summary = await views.overview(node.activity, node.quarantine, node.queue)
        return page(request, "overview.html", summary=summary)

    async def quarantine_list(request: Request, login: str) -> Response:
        if node.quarantine is None:
            return page(request, "absent.html", 404, what="the quarantine in the store")
        search = request.query_params.get("q", "")
        state = request.query_params.get("state", "held")
        found = await node.quarantine.search(search, state)
        return page(request, "quarantine.html", found=found, search=search, state=state)

    async def quarantine_one(request: Request, login: str) -> Response:
        if node.quarantine is None:
            return page(request, "absent.html", 404, what="the quarantine in the store")
        held = await node.quarantine.one(request.path_params["id"])
        if held is None:
            return page(request, "absent.html", 404, what="this held message")
        return page(request, "held.html", held=held, rendering=views.safe_rendering(held.content))

    async def quarantine_act(request: Request, login: str) -> Response:
        if node.quarantine is None:
            return page(request, "absent.html", 404, what="the quarantine in the store")
        action, held_id = request.path_params["action"], request.path_params["id"]
        notice = await node.quarantine.act(action, held_id, login)
        return RedirectResponse(f"/quarantine?notice={_quote(notice)}", status_code=303)

    async def queue_list(request: Request, login: str) -> Response:
        if node.queue is None:
            return page(request, "absent.html", 404, what='a queue (egress = "queue")')
        found = await node.queue.search(request.query_params.get("q", ""))
        return page(request, "queue.html", found=found, search=request.query_params.get("q", ""))

    async def queue_act(request: Request, login: str) -> Response:
        if node.queue is None:
            return page(request, "absent.html", 404, what="a queue")
        action, queue_id = request.path_params["action"], request.path_params["id"]
        notice = await node.queue.act(action, queue_id, login)
        return RedirectResponse(f"/queue?notice={_quote(notice)}", status_code=303)

    async def reports_page(request: Request, login: str) -> Response:
        if node.reports is None:
            return page(request, "absent.html", 404, what="DMARC reports (the reports plugin)")
        domain = request.query_params.get("domain", "")
        sources = await node.reports.sources(domain) if domain else []
        sent, received = await node.reports.reports()
        return page(
            request,
            "reports.html",
            domains=await node.reports.domains(),
            domain=domain,
            sources=sources,
            sent=sent,
            received=received,
            days=node.reports.days,
        )

    async def stylesheet(request: Request) -> Response:
        return FileResponse(HERE / "static" / "console.css", media_type="text/css")

    routes = [
        Route("/health", health),
        Route("/static/console.css", stylesheet),
        Route("/sign-in", sign_in_form, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", protected(sign_out), methods=["POST"]),
        Route("/", protected(overview)),
        Route("/quarantine", protected(quarantine_list)),
        Route("/quarantine/{id}", protected(quarantine_one)),
        Route("/quarantine/{id}/{action:str}", protected(quarantine_act), methods=["POST"]),
        Route("/queue", protected(queue_list)),
        Route("/reports", protected(reports_page)),
        Route("/queue/{id}/{action:str}", protected(queue_act), methods=["POST"]),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=secrets.token_urlsafe(32),
            session_cookie="mailgate_console",
            max_age=int(settings.session_lifetime),
            same_site="strict",
            https_only=secure,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


class SecurityHeaders(BaseHTTPMiddleware):
    """The same strict headers on every response."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin``, else
    ``Referer``); True when it says nothing (a command-line client has no cookie anyway)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source != "null"
    parts = urlsplit(source)
    return parts.netloc == request.headers.get("host", "")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300])
