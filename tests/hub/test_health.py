"""Health and metrics endpoints over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time

import httpx

from chargectl.services.hub.health import (
    MAX_CONNECTIONS_PER_PEER,
    HealthServer,
    HttpRequest,
    HttpResponse,
    Metrics,
)


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


async def _raw(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """The raw answer to ``data`` (b"reset" if the server closed before reading it: a refusal)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        return b"reset"
    finally:
        writer.close()


async def test_a_host_holding_idle_connections_shuts_out_neither_others_nor_itself_for_long() -> None:
    """A host on the LAN opens connections and sends nothing. It gets MAX_CONNECTIONS_PER_PEER of them
    (each held until the header deadline), then 503 at once: it cannot run the hub out of file
    descriptors, and another address (a probe, the scraper) is still served meanwhile."""
    server = HealthServer(Metrics(), lambda: [], header_timeout_s=2.0)
    port = await server.start()
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(MAX_CONNECTIONS_PER_PEER):
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))
            idle.append(writer)
        deadline = time.monotonic() + 30
        while server._open_total < MAX_CONNECTIONS_PER_PEER:  # accepted by the server
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        refused = await _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n", source="127.0.0.9")
        assert refused.startswith((b"HTTP/1.1 503", b"reset")) and server.refused_connections == 1
        served = await _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n", source="127.0.0.1")
        assert served.startswith(b"HTTP/1.1 200") and served.endswith(b'{"ok": true, "problems": []}')
        # The idle ones are dropped at the header deadline; then the host is served again.
        while True:
            answer = await _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n", source="127.0.0.9")
            if answer.startswith(b"HTTP/1.1 200"):
                break
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)
        assert server._open == {} and server._open_total == 0
    finally:
        for writer in idle:
            writer.close()
        await server.stop()


async def test_a_bad_content_length_is_400_and_a_failing_route_is_500_not_a_dead_server() -> None:
    async def broken(req: HttpRequest) -> HttpResponse:
        raise RuntimeError("a bug in a route")

    server = HealthServer(Metrics(), lambda: [])
    server.mount("/broken", broken)
    port = await server.start()
    try:
        for length in (b"-1", b"12x", b"\xd9\xa3", b"1 2"):
            answer = await _raw(port, b"POST /login HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), (length, answer)
        chunked = b"POST /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        assert (await _raw(port, chunked)).startswith(b"HTTP/1.1 400")
        assert (await _raw(port, b"GET /broken HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500")
        assert (await _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
    finally:
        await server.stop()
