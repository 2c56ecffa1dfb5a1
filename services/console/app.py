"""The console's routes, served on the hub's health server (``Hub.http_routes["/"]``).

Pages: ``/`` (the overview), ``/sessions/<id>``, ``/login``. JSON: ``/api/plugs``, ``/api/sessions``
(``?active=1&limit=N&user=U&plug=MAC``), ``/api/sessions/<id>``, ``/api/alerts``, ``/api/summary``.
Charts: ``/charts/plug/<MAC>.svg``, ``/charts/site/<site>.svg``. Everything but ``/login`` needs the
token when one is configured. Read-only: nothing here changes the network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from chargectl.common.errors import ChargectlError
from chargectl.common.ratelimit import RateLimiter
from chargectl.services.adapters.timeseries import PowerPoint
from chargectl.services.console import page, views
from chargectl.services.console.auth import ConsoleAuth
from chargectl.services.console.charts import power_chart
from chargectl.services.console.settings import ConsoleSettings, require_token_off_loopback
from chargectl.services.console.source import ConsoleSource, HubSource
from chargectl.services.hub.health import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from chargectl.services.hub.service import Hub

__all__ = ["ConsoleApp", "mount_console"]

log = logging.getLogger("chargectl.console")

LOGIN_ATTEMPTS = 10  # sign-in attempts per peer address per minute
MAX_OVERVIEW_PLUG_CHARTS = 60  # beyond this, the overview draws site charts only (each plug has its URL)
SUMMARY_SESSION_SCAN = 1000  # the newest sessions read to total today's
SUMMARY_TTL_S = 10.0  # today's sessions are re-read from the store at most this often


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_CSP = (
    f"default-src 'none'; script-src {_csp_hash(page.SCRIPT)}; style-src {_csp_hash(page.CSS)}; "
    "img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": _CSP,
}


def _html(status: int, body: str, **extra: str) -> HttpResponse:
    return HttpResponse(status, body.encode(), "text/html; charset=utf-8", {**_HEADERS, **extra})


def _json(status: int, doc: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc).encode(), "application/json", dict(_HEADERS))


def _svg(body: str) -> HttpResponse:
    return HttpResponse(200, body.encode(), "image/svg+xml", dict(_HEADERS))


def _error(status: int, message: str, api: bool) -> HttpResponse:
    if api:
        return _json(status, {"error": message})
    return HttpResponse(status, (message + "\n").encode(), "text/plain; charset=utf-8", dict(_HEADERS))


class BadRequest(Exception):
    pass


def _flag(query: dict[str, str] | Any, name: str) -> bool:
    value = str(query.get(name, "")).lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0")


def _limit(query: dict[str, str] | Any, default: int = 50, maximum: int = 1000) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}")
    return value


class ConsoleApp:
    def __init__(self, source: ConsoleSource, settings: ConsoleSettings) -> None:
        self.source = source
        self.settings = settings
        self.auth = ConsoleAuth(settings.token, settings.cookie_max_age_s)
        # Sign-in attempts per peer address: a guesser gets LOGIN_ATTEMPTS a minute, then 429s.
        self._logins = RateLimiter(LOGIN_ATTEMPTS, 60.0, max_keys=10_000)
        self._recent: list[Any] = []
        self._recent_at: float | None = None
        self._routes: list[tuple[str, Callable[[HttpRequest, str], Any]]] = [
            ("/api/plugs", self._api_plugs),
            ("/api/sessions/", self._api_session),
            ("/api/sessions", self._api_sessions),
            ("/api/alerts", self._api_alerts),
            ("/api/summary", self._api_summary),
            ("/charts/plug/", self._chart_plug),
            ("/charts/site/", self._chart_site),
            ("/sessions/", self._session_page),
        ]

    def _now_s(self) -> float:
        return self.source.now_ms() / 1000

    # ------------------------------------------------------------------ dispatch

    async def route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        api = path.startswith(("/api/", "/charts/"))
        if path == "/login":
            return self._login(request)
        if path == "/logout":
            if request.method != "POST":
                return _error(405, "method not allowed", api)
            return HttpResponse(
                303, b"", headers={"Location": "/login", "Set-Cookie": self.auth.logout_cookie()}
            )
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method not allowed", api)
        if not self.auth.allows(request.headers, self._now_s()):
            if api:
                resp = _json(401, {"error": "the console token is required (Authorization: Bearer …)"})
                return HttpResponse(
                    401, resp.body, resp.content_type, {**resp.headers, "WWW-Authenticate": "Bearer"}
                )
            return _html(401, page.login_page())
        try:
            if path == "/":
                return await self._overview()
            for prefix, handler in self._routes:
                if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                    rest = unquote(path[len(prefix) :]) if prefix.endswith("/") else ""
                    result: HttpResponse = await handler(request, rest)
                    return result
        except BadRequest as exc:
            return _error(400, str(exc), api)
        except ChargectlError as exc:
            log.warning("console could not read %s: %s", path, exc)
            return _error(503, f"temporarily unavailable: {exc}", api)
        return _error(404, "not found", api)

    def _login(self, request: HttpRequest) -> HttpResponse:
        if not self.auth.required:
            return HttpResponse(303, b"", headers={"Location": "/"})
        if request.method == "GET":
            return _html(200, page.login_page())
        if request.method != "POST":
            return _error(405, "method not allowed", False)
        now_s = self._now_s()
        wait_s = self._logins.take(request.peer or "?", now_s)
        if wait_s > 0:
            log.warning("console sign-in from %s refused: too many attempts", request.peer or "?")
            resp = _html(429, page.login_page("Too many attempts: wait a minute and try again."))
            return HttpResponse(429, resp.body, resp.content_type, {"Retry-After": str(int(wait_s) + 1)})
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        if self.auth.token_matches(form.get("token", "")):
            log.info("console sign-in from %s", request.peer or "?")
            cookie = self.auth.login_cookie(now_s)
            return HttpResponse(303, b"", headers={"Location": "/", "Set-Cookie": cookie})
        log.warning("console sign-in refused from %s (wrong token)", request.peer or "?")
        return _html(401, page.login_page("That token is not right."))

    # ------------------------------------------------------------------ reads

    def _window(self) -> tuple[int, int, int]:
        now = self.source.now_ms()
        step = self.settings.chart_step_s * 1000
        return now - self.settings.chart_window_s * 1000, now + 1, step

    async def _series(self, fn: Callable[..., list[PowerPoint]], *args: Any) -> list[PowerPoint] | None:
        """A time-series read off the event loop (the Influx read is HTTP); None if it failed."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ChargectlError as exc:
            log.warning("console chart read failed: %s", exc)
            return None

    async def _plug_chart(self, mac: str, since: int, until: int, step: int) -> str:
        points = await self._series(self.source.plug_power, mac, since, until, step)
        title = f"{mac} · last {self.settings.chart_window_s // 60} min"
        return _chart_or_error(points, since, until, step, title)

    async def _site_chart(self, site_id: str, since: int, until: int, step: int) -> str:
        points = await self._series(self.source.site_power, site_id, since, until, step)
        title = f"site {site_id} total · last {self.settings.chart_window_s // 60} min"
        return _chart_or_error(points, since, until, step, title)

    def _sites(self, plugs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        names = self.source.site_names()
        ids = sorted({p["site_id"] for p in plugs})
        return [(site_id, names.get(site_id, "")) for site_id in ids]

    def _recent_sessions(self) -> list[Any]:
        """The newest sessions for today's totals, cached: every open page polls the summary."""
        mono = time.monotonic()
        if self._recent_at is None or mono - self._recent_at >= SUMMARY_TTL_S:
            self._recent = self.source.sessions(limit=SUMMARY_SESSION_SCAN)
            self._recent_at = mono
        return self._recent

    def _summary(self) -> dict[str, Any]:
        now = self.source.now_ms()
        rows = self.source.plugs()
        return views.today_totals(self._recent_sessions(), rows, now)

    async def _overview(self) -> HttpResponse:
        now = self.source.now_ms()
        rows = self.source.plugs()
        plugs = [views.plug_doc(r, now) for r in rows]
        totals = views.today_totals(self._recent_sessions(), rows, now)
        alerts = [views.alert_doc(a, now) for a in self.source.alerts()]
        sites = self._sites(plugs)
        since, until, step = self._window()
        site_charts = {s: await self._site_chart(s, since, until, step) for s, _ in sites}
        plug_charts: dict[str, str] = {}
        if len(plugs) <= MAX_OVERVIEW_PLUG_CHARTS:
            plug_charts = {p["mac"]: await self._plug_chart(p["mac"], since, until, step) for p in plugs}
        html = page.overview_page(
            now_ms=now,
            sites=sites,
            plugs=plugs,
            totals=totals,
            alerts=alerts,
            site_charts=site_charts,
            plug_charts=plug_charts,
            refresh_ms=round(self.settings.refresh_s * 1000),
            chart_ms=max(self.settings.chart_step_s, 5) * 1000,
            logout=self.auth.required,
        )
        return _html(200, html)

    async def _api_plugs(self, request: HttpRequest, _: str) -> HttpResponse:
        now = self.source.now_ms()
        return _json(200, {"now_ms": now, "plugs": [views.plug_doc(r, now) for r in self.source.plugs()]})

    async def _api_sessions(self, request: HttpRequest, _: str) -> HttpResponse:
        q = request.query
        sessions = self.source.sessions(
            active_only=_flag(q, "active"),
            limit=_limit(q),
            user_id=q.get("user") or None,
            plug_mac=(q.get("plug") or "").upper() or None,
        )
        live = {r.session.session_id: r.session for r in self.source.plugs() if r.session is not None}
        return _json(200, {"sessions": [views.session_doc(s, live.get(s.session_id)) for s in sessions]})

    async def _api_session(self, request: HttpRequest, session_id: str) -> HttpResponse:
        s = self.source.session(session_id)
        if s is None:
            return _json(404, {"error": f"no session {session_id!r}"})
        live = self.source.live_session(session_id)
        doc = views.session_doc(s, live[1] if live else None)
        cost = views.cost_breakdown(s, self.source.tariff_for(s.site_id), live[1] if live else None)
        doc["breakdown"] = (
            None
            if cost is None
            else {
                "energy_minor": str(cost.energy_minor),
                "fee_minor": str(cost.fee_minor),
                "idle_minor": str(cost.idle_minor),
            }
        )
        return _json(200, doc)

    async def _api_alerts(self, request: HttpRequest, _: str) -> HttpResponse:
        now = self.source.now_ms()
        return _json(200, {"alerts": [views.alert_doc(a, now) for a in self.source.alerts()]})

    async def _api_summary(self, request: HttpRequest, _: str) -> HttpResponse:
        rows = self.source.plugs()
        plugs = [views.plug_doc(r, self.source.now_ms()) for r in rows]
        return _json(
            200,
            {
                "today": self._summary(),
                "sites": [{"site_id": s, "name": n} for s, n in self._sites(plugs)],
            },
        )

    async def _chart_plug(self, request: HttpRequest, rest: str) -> HttpResponse:
        mac = rest.removesuffix(".svg").upper()
        if not rest.endswith(".svg") or not mac:
            raise BadRequest("chart URLs end in .svg")
        since, until, step = self._window()
        return _svg(await self._plug_chart(mac, since, until, step))

    async def _chart_site(self, request: HttpRequest, rest: str) -> HttpResponse:
        site_id = rest.removesuffix(".svg")
        if not rest.endswith(".svg") or not site_id:
            raise BadRequest("chart URLs end in .svg")
        since, until, step = self._window()
        return _svg(await self._site_chart(site_id, since, until, step))

    async def _session_page(self, request: HttpRequest, session_id: str) -> HttpResponse:
        s = self.source.session(session_id)
        if s is None:
            return _error(404, f"no session {session_id!r}", False)
        live_pair = self.source.live_session(session_id)
        live = live_pair[1] if live_pair else None
        doc = views.session_doc(s, live)
        cost = views.cost_breakdown(s, self.source.tariff_for(s.site_id), live)
        breakdown = views.cost_lines(cost, doc["currency"]) if cost is not None else None
        start = s.started_at_ms
        end = (s.ended_at_ms or self.source.now_ms()) + 1
        step = max(1000, ((end - start) // 300 // 1000) * 1000)
        since = start - step
        points = await self._series(self.source.plug_power, s.plug_mac, since, end + step, step)
        chart = _chart_or_error(points, since, end + step, step, f"{s.plug_mac} during the session")
        return _html(200, page.session_page(doc, breakdown, chart, logout=self.auth.required))


def _chart_or_error(points: list[PowerPoint] | None, since: int, until: int, step: int, title: str) -> str:
    if points is None:
        return power_chart([], since, until, step, title=f"{title} (time series unavailable)")
    return power_chart(points, since, until, step, title=title)


def mount_console(hub: Hub, settings: ConsoleSettings, bind_host: str) -> ConsoleApp | None:
    """Serve the console at ``/`` on the hub's health server; refuses (ConfigError) a non-loopback
    bind without a token. None when ``[console] enabled = false``."""
    if not settings.enabled:
        return None
    require_token_off_loopback(bind_host, settings)
    app = ConsoleApp(HubSource(hub), settings)
    hub.http_routes["/"] = app.route
    return app
