"""The console's pure parts (bind rule, token, charts, totals, cost breakdown) and its routes over a
real hub on SQLite (no servers): hostile names escaped, a failing time series degrades to a note."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargectl.common import codec
from chargectl.common.alerts import AlertKind
from chargectl.common.clock import ManualClock
from chargectl.common.errors import ConfigError, StoreError
from chargectl.common.readings import Reading
from chargectl.services.adapters.memory_bus import MemoryBus
from chargectl.services.adapters.sqlite_store import SqliteStore
from chargectl.services.adapters.sqlite_timeseries import SqliteTimeSeries
from chargectl.services.adapters.timeseries import PowerPoint
from chargectl.services.console.app import mount_console
from chargectl.services.console.auth import COOKIE_NAME, ConsoleAuth
from chargectl.services.console.charts import nice_ceiling, power_chart
from chargectl.services.console.settings import ConsoleSettings, is_loopback, require_token_off_loopback
from chargectl.services.console.source import HubSource, LiveSession, PlugRow
from chargectl.services.console.views import cost_breakdown, cost_lines, money, today_totals
from chargectl.services.hub.billing import Tariff, session_cost
from chargectl.services.hub.health import HttpRequest
from chargectl.services.hub.service import Hub, HubPorts
from chargectl.services.hub.settings import HubSettings

TOKEN = "a-console-token-of-32-characters"
T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z


# ---------------------------------------------------------------------------- bind rule and token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("hub.example.org", False),  # a name may resolve anywhere: not trusted as loopback
        ("", False),
    ],
)
def test_loopback_is_decided_by_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_console_off_loopback_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        require_token_off_loopback("0.0.0.0", ConsoleSettings())
    assert "[console] token" in str(err.value) and "\n" not in str(err.value)
    require_token_off_loopback("0.0.0.0", ConsoleSettings(token=TOKEN))
    require_token_off_loopback("0.0.0.0", ConsoleSettings(enabled=False))
    require_token_off_loopback("127.0.0.1", ConsoleSettings())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"token": "short"},
        {"token": " " + TOKEN},
        {"refresh_s": 5},
        {"chart_step_s": 0},
        {"chart_window_s": 10},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConsoleSettings(**kwargs)


def test_settings_repr_hides_the_token() -> None:
    assert TOKEN not in repr(ConsoleSettings(token=TOKEN))


def test_token_by_bearer_or_cookie_and_nothing_else() -> None:
    now = 1_767_268_800.0
    auth = ConsoleAuth(TOKEN, cookie_max_age_s=3600)
    assert auth.allows({"authorization": f"Bearer {TOKEN}"}, now)
    assert auth.allows({"authorization": f"bearer  {TOKEN} "}, now)
    assert not auth.allows({}, now)
    assert not auth.allows({"authorization": f"Bearer {TOKEN[:-1]}"}, now)
    assert not auth.allows({"authorization": f"Bearer {TOKEN}x"}, now)
    assert not auth.allows({"authorization": f"Basic {TOKEN}"}, now)
    assert not auth.allows({"authorization": "Bearer "}, now)
    cookie = auth.login_cookie(now)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert "Max-Age=3600" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert auth.allows({"cookie": f"other=1; {COOKIE_NAME}={value}"}, now)
    assert not auth.allows({"cookie": f"{COOKIE_NAME}={TOKEN}"}, now)  # the raw token is not a cookie
    assert not auth.allows({"cookie": f"{COOKIE_NAME}="}, now)
    other = ConsoleAuth("another-token-of-enough-length", cookie_max_age_s=3600)
    assert not other.allows({"cookie": f"{COOKIE_NAME}={value}"}, now)
    open_auth = ConsoleAuth("")
    assert not open_auth.required and open_auth.allows({}, now)
    assert not open_auth.token_matches("")  # no token: nothing "matches" (the login form is moot)


def test_a_login_cookie_expires_at_the_server_and_its_expiry_cannot_be_edited() -> None:
    """A copied cookie is not good forever: the hub refuses it once ``cookie_max_age_s`` has passed,
    whatever the browser keeps, and moving its expiry breaks its signature."""
    now = 1_767_268_800.0
    auth = ConsoleAuth(TOKEN, cookie_max_age_s=3600)
    value = auth.login_cookie(now).split(";")[0].split("=", 1)[1]
    expires, mac = value.split(".")
    assert int(expires) == int(now) + 3600

    def allowed(v: str, at: float) -> bool:
        return auth.allows({"cookie": f"{COOKIE_NAME}={v}"}, at)

    assert allowed(value, now + 3599)
    assert not allowed(value, now + 3600)  # expired: signed in again or nothing
    assert not allowed(value, now + 30 * 86400)
    assert not allowed(f"{int(expires) + 86400}.{mac}", now + 3600)  # a later expiry, same signature
    assert not allowed(f"{int(now) + 10 * 86400}.{mac}", now)
    for junk in (mac, f".{mac}", f"-1.{mac}", f"１２.{mac}", f"{expires}.", f"{expires}.{mac}x", "9" * 40):
        assert not allowed(junk, now), junk
    # A cookie issued for longer than this hub now grants (a longer max age before) is refused too.
    longer = ConsoleAuth(TOKEN, cookie_max_age_s=30 * 86400).login_cookie(now).split(";")[0].split("=", 1)[1]
    assert not allowed(longer, now)


# ---------------------------------------------------------------------------- charts


def _vertices(svg: str) -> list[tuple[str, float, float]]:
    (d,) = re.findall(r'<path class="line" fill="none" d="([^"]*)"', svg)
    return [(c, float(x), float(y)) for c, x, y in re.findall(r"([ML])(-?[\d.]+),(-?[\d.]+)", d)]


def test_chart_has_a_vertex_per_bucket_and_breaks_at_gaps() -> None:
    step = 1000
    pts = [PowerPoint(T0 + i * step, 100.0) for i in (0, 1, 2, 6, 7)]
    svg = power_chart(pts, T0, T0 + 10 * step, step, title="p")
    v = _vertices(svg)
    assert [c for c, _, _ in v] == ["M", "L", "L", "M", "L"]  # 3 buckets missing: the line breaks
    xs = [x for _, x, _ in v]
    assert xs == sorted(xs)
    # the plot spans x 52..392 (width 400, margins 52/8); bucket i is drawn at its middle
    assert xs[0] == pytest.approx(52 + 0.5 / 10 * 340, abs=0.06)
    # 100 W is itself a round number: the axis tops out there and the line runs along the top (y 20)
    assert all(y == 20.0 for _, _, y in v)
    assert ">100 W<" in svg and ">50 W<" in svg


def test_chart_axis_and_window() -> None:
    assert [nice_ceiling(v) for v in (0, 3, 10, 11, 180, 230, 260, 2301.5)] == [
        10,
        10,
        10,
        20,
        200,
        250,
        500,
        2500,
    ]
    pts = [PowerPoint(T0 - 5000, 999.0), PowerPoint(T0 + 1000, float("nan")), PowerPoint(T0 + 2000, 50.0)]
    svg = power_chart(pts, T0, T0 + 10_000, 1000, title="p")
    assert len(_vertices(svg)) == 1  # the point before the window and the NaN are not drawn
    empty = power_chart([], T0, T0 + 10_000, 1000, title="p")
    assert "path" not in empty and "no readings" in empty


def test_chart_title_is_escaped() -> None:
    svg = power_chart([], T0, T0 + 10_000, 1000, title='<script>alert("x")</script>')
    assert "<script>" not in svg and "&lt;script&gt;" in svg


# ---------------------------------------------------------------------------- totals and money


def _session(
    sid: str, ended_ms: int, energy: int, cost: int, cur: str = "gbp", **kw: Any
) -> codec.ChargeSession:
    return codec.ChargeSession(
        session_id=sid,
        user_id="u1",
        plug_mac="AABBCCDDEEFF",
        site_id="s1",
        status=codec.ChargeSession.STATUS_COMPLETED,
        started_at_ms=ended_ms - 60_000,
        ended_at_ms=ended_ms,
        energy_mwh=energy,
        cost=codec.Money(amount_minor=cost, currency=cur),
        **kw,
    )


TARIFF = Tariff(
    tariff_id="t1",
    currency="gbp",
    price_per_kwh_minor=Decimal("35"),
    session_fee_minor=50,
    idle_price_per_minute_minor=Decimal("2"),
    idle_grace_s=60,
)


def test_today_totals_count_only_sessions_that_ended_today_per_currency() -> None:
    now = T0  # midday; midnight is T0 - 12 h
    sessions = [
        _session("a", T0 - 3_600_000, 1_500_000, 103),
        _session("b", T0 - 60_000, 2_000_000, 120),
        _session("c", T0 - 13 * 3_600_000, 9_000_000, 999),  # yesterday evening
        _session("d", T0 - 1000, 500_000, 40, "eur"),
        codec.ChargeSession(session_id="e", status=codec.ChargeSession.STATUS_ACTIVE, started_at_ms=T0 - 10),
    ]
    live = LiveSession("e", "u2", T0 - 10, 250_000, 0, session_cost(TARIFF, 250_000), "gbp")
    rows = [
        PlugRow("AABBCCDDEEFF", "s1", "", "ev", "CHARGING", "", True, 1200.0, T0, live),
        PlugRow("AABBCCDDEE00", "s1", "", "ev", "AVAILABLE", "", False, 0.4, T0),
    ]
    t = today_totals(sessions, rows, now)
    assert t["day"] == "2026-01-01"
    assert t["sessions_completed"] == 3
    assert t["energy_kwh"] == pytest.approx(4.0)
    assert t["revenue_minor"] == {"eur": 40, "gbp": 223}
    assert t["revenue"] == ["0.40 EUR", "2.23 GBP"]
    # 0.25 kWh at 35p = 8.75p, plus the 50p fee = 58.75 → 59p (rounded once, half up)
    assert t["sessions_active"] == 1 and t["active_cost_minor"] == {"gbp": 59}
    assert t["power_w"] == pytest.approx(1200.4)


def test_money_formatting() -> None:
    assert [money(v, c) for v, c in ((0, "gbp"), (5, "gbp"), (1234, "eur"), (-250, "gbp"), (700, "jpy"))] == [
        "0.00 GBP",
        "0.05 GBP",
        "12.34 EUR",
        "-2.50 GBP",
        "700 JPY",
    ]


def test_cost_breakdown_only_when_the_tariff_reproduces_the_bill() -> None:
    # 2.5 kWh at 35p = 87.5p; 5 min idle, 1 min grace: 4 min at 2p = 8p; fee 50p: 145.5 → 146p
    s = _session("a", T0, 2_500_000, 146, idle_s=300, tariff_id="t1", stop_reason="EVDisconnected")
    cost = cost_breakdown(s, TARIFF, None)
    assert cost is not None
    assert (cost.energy_minor, cost.idle_minor, cost.fee_minor) == (Decimal("87.5"), Decimal(8), Decimal(50))
    assert cost.total_minor == 146
    changed = Tariff(tariff_id="t1", currency="gbp", price_per_kwh_minor=Decimal("40"), session_fee_minor=50)
    assert cost_breakdown(s, changed, None) is None  # same id, other prices: components would lie
    assert (
        cost_breakdown(s, Tariff(tariff_id="t2", currency="gbp", price_per_kwh_minor=Decimal("35")), None)
        is None
    )
    no_load = _session("n", T0, 0, 0, tariff_id="t1", stop_reason="Timeout")
    nl = cost_breakdown(no_load, TARIFF, None)
    assert nl is not None and nl.fee_minor == 0 and nl.total_minor == 0  # no fee when nothing drew


# ---------------------------------------------------------------------------- routes over a real hub


class _Env:
    def __init__(self, tmp: Path, token: str = "") -> None:
        self.clock = ManualClock(start=T0 / 1000)
        self.store = SqliteStore(tmp / "hub.db")
        self.ts = SqliteTimeSeries(tmp / "ts.db")
        settings = HubSettings(tariff=HubSettings().tariff)
        self.hub = Hub(settings, HubPorts(MemoryBus(), self.store, self.ts, _no_key), self.clock)
        self.app = mount_console(self.hub, ConsoleSettings(token=token), "127.0.0.1")
        assert self.app is not None

    async def get(self, path: str, headers: dict[str, str] | None = None, **query: str) -> Any:
        return await self.app.route(HttpRequest("GET", path, query, headers or {}))


def _no_key(site: codec.Site, now_ms: int) -> Any:
    raise AssertionError("no commands in these tests")


@pytest.fixture
def env(tmp_path: Path) -> Any:
    e = _Env(tmp_path)
    yield e
    e.ts.close()
    e.store.close()


async def test_hostile_names_are_escaped_everywhere(env: _Env) -> None:
    evil = '<img src=x onerror="alert(1)">'
    env.store.put_plug_state(
        codec.PlugState(
            plug_mac="AABBCCDDEEFF", site_id="s1", name=evil, status=3, relay_on=True, power_w=5.0
        )
    )
    env.store.put_session(
        codec.ChargeSession(
            session_id="s-1",
            user_id=evil,
            plug_mac="AABBCCDDEEFF",
            site_id="s1",
            status=codec.ChargeSession.STATUS_COMPLETED,
            started_at_ms=T0 - 60_000,
            ended_at_ms=T0,
            energy_mwh=1000,
            cost=codec.Money(amount_minor=3, currency="gbp"),
            stop_reason=evil,
        )
    )
    env.hub.alerts.raise_alert(AlertKind.PLUG_FAULTED, "AABBCCDDEEFF", evil, T0 - 90_000)
    for path in ("/", "/sessions/s-1"):
        resp = await env.get(path)
        assert resp.status == 200, path
        body = resp.body.decode()
        assert "<img" not in body and "&lt;img" in body, path
        assert "script-src 'sha256-" in resp.headers["Content-Security-Policy"]  # no other script runs
    alerts = json.loads((await env.get("/api/alerts")).body)["alerts"]
    assert alerts[0]["message"] == evil and alerts[0]["age_s"] == 90  # JSON carries it verbatim


async def test_live_plug_from_the_hub_and_charts_from_the_time_series(env: _Env) -> None:
    mac = "AABBCCDDEEFF"
    batch = codec.Batch(
        site_id="s1",
        batch_seq=1,
        readings=tuple(Reading(mac, T0 - 30_000 + i * 5000, 100.0 * i, 1000 * i, True) for i in range(6)),
    )
    env.hub.process_batch(batch)
    plugs = json.loads((await env.get("/api/plugs")).body)["plugs"]
    assert [(p["mac"], p["power_w"], p["relay_on"], p["last_seen_age_s"], p["live"]) for p in plugs] == [
        (mac, 500.0, True, 5, True)
    ]
    # 15 s buckets (T0 is a multiple of 15 s): 0/100/200 W → mean 100 W, then 300/400/500 → 400 W
    svg = (await env.get(f"/charts/plug/{mac}.svg")).body.decode()
    v = _vertices(svg)
    assert len(v) == 2 and "500 W" in svg  # the axis tops out at 500 W
    # y = top + plot_h - w / 500 * plot_h with top 20, plot_h 108 (height 150, margins 20/22)
    assert [y for _, _, y in v] == [
        pytest.approx(128 - 100 / 500 * 108, abs=0.06),
        pytest.approx(128 - 400 / 500 * 108, abs=0.06),
    ]
    site = (await env.get("/charts/site/s1.svg")).body.decode()
    assert [y for _, _, y in _vertices(site)] == [y for _, _, y in v]
    assert (await env.get("/charts/plug/x")).status == 400
    bad = await env.get("/api/sessions", limit="0")
    assert bad.status == 400 and json.loads(bad.body) == {"error": "limit must be between 1 and 1000"}
    assert (await env.get("/api/sessions", active="maybe")).status == 400
    assert (await env.get("/nothing-here")).status == 404
    assert (await env.app.route(HttpRequest("POST", "/", {}, {}))).status == 405


async def test_a_failing_time_series_leaves_the_page_up(env: _Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> list[PowerPoint]:
        raise StoreError("time series read failed: ConnectError")

    monkeypatch.setattr(env.ts, "plug_power", broken)
    monkeypatch.setattr(env.ts, "site_power", broken)
    env.store.put_plug_state(codec.PlugState(plug_mac="AABBCCDDEEFF", site_id="s1", status=1))
    page = await env.get("/")
    assert page.status == 200 and "AABBCCDDEEFF" in page.body.decode()
    assert "time series unavailable" in page.body.decode()
    chart = await env.get("/charts/plug/AABBCCDDEEFF.svg")
    assert chart.status == 200 and "time series unavailable" in chart.body.decode()


async def test_token_guards_pages_api_and_charts_but_not_login(tmp_path: Path) -> None:
    e = _Env(tmp_path, token=TOKEN)
    try:
        e.store.put_plug_state(codec.PlugState(plug_mac="AABBCCDDEEFF", site_id="s1", status=1))
        for path in (
            "/",
            "/api/plugs",
            "/api/alerts",
            "/api/summary",
            "/api/sessions",
            "/charts/site/s1.svg",
        ):
            resp = await e.get(path)
            assert resp.status == 401 and b"AABBCCDDEEFF" not in resp.body, path
        assert (await e.get("/api/plugs", {"authorization": f"Bearer {TOKEN}"})).status == 200
        assert (await e.get("/login")).status == 200
        wrong = await e.app.route(HttpRequest("POST", "/login", {}, {}, b"token=nope"))
        assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
        right = await e.app.route(HttpRequest("POST", "/login", {}, {}, f"token={TOKEN}".encode()))
        assert right.status == 303 and right.headers["Location"] == "/"
        cookie = right.headers["Set-Cookie"].split(";")[0]
        assert (await e.get("/", {"cookie": cookie})).status == 200
        out = await e.app.route(HttpRequest("POST", "/logout", {}, {"cookie": cookie}))
        assert out.status == 303 and "Max-Age=0" in out.headers["Set-Cookie"]
    finally:
        e.ts.close()
        e.store.close()


async def test_sign_in_guesses_are_limited_per_peer_and_a_cookie_outlives_nothing(tmp_path: Path) -> None:
    """A guesser on the LAN gets ten sign-in attempts a minute, then 429 with no cookie, even for the
    right token; another address is not held back; a minute later the right token works, and the
    cookie it sets is refused once the hub's clock passes its max age."""
    e = _Env(tmp_path, token=TOKEN)
    try:

        def post(body: bytes, peer: str) -> Any:
            return e.app.route(HttpRequest("POST", "/login", {}, {}, body, peer=peer))

        for i in range(10):
            wrong = await post(f"token=guess-{i}".encode(), "10.0.0.66")
            assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
        held = await post(f"token={TOKEN}".encode(), "10.0.0.66")
        assert (
            held.status == 429 and "Set-Cookie" not in held.headers and int(held.headers["Retry-After"]) >= 1
        )
        assert (await post(f"token={TOKEN}".encode(), "10.0.0.7")).status == 303  # the operator's laptop
        e.clock.advance(60)
        right = await post(f"token={TOKEN}".encode(), "10.0.0.66")
        assert right.status == 303
        cookie = right.headers["Set-Cookie"].split(";")[0]
        assert (await e.get("/api/plugs", {"cookie": cookie})).status == 200
        e.clock.advance(ConsoleSettings().cookie_max_age_s)
        assert (await e.get("/api/plugs", {"cookie": cookie})).status == 401
    finally:
        e.ts.close()
        e.store.close()


def test_the_hub_source_joins_other_shards_plugs_from_the_store(env: _Env) -> None:
    env.store.put_plug_state(
        codec.PlugState(
            plug_mac="001122334455",
            site_id="far",
            name="Bay 4",
            plug_class=2,
            status=7,
            power_w=1.5,
            last_reading_ms=T0 - 61_000,
        )
    )
    (row,) = HubSource(env.hub).plugs()
    assert (row.mac, row.name, row.plug_class, row.state, row.live, row.last_seen_ms) == (
        "001122334455",
        "Bay 4",
        "ebike",
        "FAULTED",
        False,
        T0 - 61_000,
    )


def test_the_cloud_hub_refuses_an_open_console_off_loopback_before_opening_any_backend() -> None:
    from chargectl.common.config import Config
    from chargectl.services.hub.cloud import build_cloud_hub

    config = Config(backend="gcp", project="p", sections={"hub": {"health_host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match=r"\[console\] token"):
        build_cloud_hub(config)


@pytest.mark.integration
def test_the_cloud_hub_mounts_the_console(pubsub_env: Any, firestore_env: Any, tmp_path: Path) -> None:
    from chargectl.common.config import Config
    from chargectl.services.hub.cloud import build_cloud_hub

    config = Config(backend="gcp", project="console-mount", state_dir=tmp_path, config_dir=tmp_path)
    hub = build_cloud_hub(config)
    try:
        assert "/" in hub.http_routes
    finally:
        hub.ports.timeseries.close()
        hub.store.close()


def test_session_page_rounds_each_component_half_up_like_the_bill() -> None:
    # 2.150 kWh at 30p/kWh is exactly 64.5p: the bill rounds half up to 65p (plus the 25p fee = 90p).
    # Python's round() would print 0.64, and the page's parts would not add up to what was debited.
    tariff = Tariff(price_per_kwh_minor=Decimal(30), session_fee_minor=25)
    cost = session_cost(tariff, 2_150_000)
    assert cost.total_minor == 90
    lines = cost_lines(cost, "gbp")
    assert lines["energy"] == "0.65 GBP (2.150 kWh billed)"
    assert lines["fee"] == "0.25 GBP"
    assert lines["idle"] == "0.00 GBP (0 s billed)"
