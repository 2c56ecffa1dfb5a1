"""Health and metrics endpoints over real HTTP on loopback."""

from __future__ import annotations

import httpx

from chargectl.services.hub.health import HealthServer, Metrics


def test_metrics_render_prometheus_text() -> None:
    m = Metrics(catalogue=(), process_metrics=False)
    m.inc("dead_lettered_total", help_text="Messages dead-lettered", reason="malformed")
    m.inc("dead_lettered_total", reason="malformed")
    m.inc("dead_lettered_total", reason="unverified")
    m.set("open_sessions", 3)
    m.gauge_probe("plugs", lambda: {(("state", "CHARGING"),): 2.0, (("state", "AVAILABLE"),): 5.0})
    assert m.render() == (
        "# HELP chargectl_dead_lettered_total Messages dead-lettered\n"
        "# TYPE chargectl_dead_lettered_total counter\n"
        'chargectl_dead_lettered_total{reason="malformed"} 2.0\n'
        'chargectl_dead_lettered_total{reason="unverified"} 1.0\n'
        "# HELP chargectl_open_sessions Open sessions\n"
        "# TYPE chargectl_open_sessions gauge\n"
        "chargectl_open_sessions 3.0\n"
        "# HELP chargectl_plugs Plugs\n"
        "# TYPE chargectl_plugs gauge\n"
        'chargectl_plugs{state="AVAILABLE"} 5.0\n'
        'chargectl_plugs{state="CHARGING"} 2.0\n'
    )
    assert m.value("dead_lettered_total", reason="malformed") == 2
    assert m.value("plugs", state="CHARGING") == 2


async def test_healthz_and_metrics_over_http() -> None:
    problems: list[str] = []
    m = Metrics()
    m.inc("readings_total", 7)
    server = HealthServer(m, lambda: list(problems))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ok = await client.get("/healthz")
            assert ok.status_code == 200 and ok.json() == {"ok": True, "problems": []}
            problems.append("telemetry subscriber stopped")
            bad = await client.get("/healthz")
            assert bad.status_code == 503 and bad.json()["problems"] == ["telemetry subscriber stopped"]
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and "chargectl_readings_total 7.0" in metrics.text
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/healthz")).status_code == 405
    finally:
        await server.stop()


async def test_mounted_routes_share_the_port_and_never_shadow_healthz() -> None:
    from chargectl.services.hub.health import HttpRequest, HttpResponse

    seen: list[HttpRequest] = []

    async def console(req: HttpRequest) -> HttpResponse:
        seen.append(req)
        return HttpResponse(200, f"{req.method} {req.path} {dict(req.query)}".encode(), headers={"X-A": "1"})

    async def api(req: HttpRequest) -> HttpResponse:
        return HttpResponse(401, req.body, "application/json")

    server = HealthServer(Metrics(), lambda: [])
    server.mount("/", console)
    server.mount("/api", api)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).json() == {"ok": True, "problems": []}
            page = await client.get("/sessions/s1?x=2")
            assert page.text == "GET /sessions/s1 {'x': '2'}" and page.headers["x-a"] == "1"
            denied = await client.post("/api/plugs", content=b'{"a":1}')
            assert denied.status_code == 401 and denied.content == b'{"a":1}'
            assert (await client.get("/apiary")).status_code == 200  # a prefix matches whole segments
            too_big = await client.post("/login", content=b"x" * (65 * 1024))
            assert too_big.status_code == 413
    finally:
        await server.stop()
    assert [r.path for r in seen] == ["/sessions/s1", "/apiary"]
