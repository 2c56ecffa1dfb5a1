"""``/healthz`` and Prometheus-style ``/metrics`` on a loopback port (stdlib asyncio, no framework).

``Metrics`` is a small registry of counters and gauges with optional labels; the hub updates it and
the server renders it in the Prometheus text format. Gauges may be callables evaluated at scrape time.
Other components serve pages on the same port through :meth:`HealthServer.mount` (a path prefix and
an async handler of :class:`HttpRequest` → :class:`HttpResponse`); /healthz and /metrics stay the
server's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HealthServer", "HttpRequest", "HttpResponse", "Metrics", "Route"]

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Family:
    kind: str  # "counter" | "gauge"
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    probe: Callable[[], Mapping[Labels, float]] | None = None


class Metrics:
    """Counters and gauges by name and labels."""

    def __init__(self, prefix: str = "chargectl_") -> None:
        self.prefix = prefix
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, kind: str, help_text: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(kind, help_text)
        return fam

    def counter(self, name: str, help_text: str = "") -> None:
        self._family(name, "counter", help_text)

    def inc(self, name: str, amount: float = 1.0, help_text: str = "", **labels: str) -> None:
        fam = self._family(name, "counter", help_text)
        key = tuple(sorted(labels.items()))
        fam.values[key] = fam.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        self._family(name, "gauge", help_text).values[tuple(sorted(labels.items()))] = value

    def gauge_probe(
        self, name: str, probe: Callable[[], Mapping[Labels, float]], help_text: str = ""
    ) -> None:
        """A gauge computed at scrape time (e.g. plugs by state)."""
        self._family(name, "gauge", help_text).probe = probe

    def value(self, name: str, **labels: str) -> float:
        fam = self._families.get(name)
        if fam is None:
            return 0.0
        values = dict(fam.probe()) if fam.probe else fam.values
        return values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._families):
            fam = self._families[name]
            full = self.prefix + name
            if fam.help:
                lines.append(f"# HELP {full} {fam.help}")
            lines.append(f"# TYPE {full} {fam.kind}")
            values = dict(fam.probe()) if fam.probe else fam.values
            for labels, value in sorted(values.items()):
                label_text = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
                lines.append(f"{full}{{{label_text}}} {value:g}" if label_text else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One parsed request: header names lower-case, the body read (at most ``MAX_BODY_BYTES``)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    peer: str = ""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[HttpRequest], Awaitable[HttpResponse]]

_REASONS = {
    200: "OK",
    204: "No Content",
    302: "Found",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HealthServer:
    """Serves ``GET /healthz`` (200 when ``check()`` is empty, else 503 with the problems), ``/metrics``
    and whatever is mounted."""

    def __init__(
        self, metrics: Metrics, check: Callable[[], list[str]], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.metrics = metrics
        self.check = check
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._routes: dict[str, Route] = {}

    def mount(self, prefix: str, route: Route) -> None:
        """Serve ``prefix`` and everything under it (``"/"``: every path not otherwise served)."""
        self._routes[prefix.rstrip("/") or "/"] = route

    def _route_for(self, path: str) -> Route | None:
        for prefix in sorted(self._routes, key=len, reverse=True):
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return self._routes[prefix]
        return None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            method = parts[0] if parts else ""
            target = urlsplit(parts[1] if len(parts) >= 2 else "")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or "0")
            if not 0 <= length <= MAX_BODY_BYTES:
                response = HttpResponse(413, b"request body too large\n")
            else:
                body = await asyncio.wait_for(reader.readexactly(length), timeout=5) if length else b""
                peer = writer.get_extra_info("peername")
                request = HttpRequest(
                    method,
                    target.path,
                    dict(parse_qsl(target.query)),
                    headers,
                    body,
                    str(peer[0]) if isinstance(peer, tuple) and peer else "",
                )
                response = await self._respond(request)
            status = f"{response.status} {_REASONS.get(response.status, 'Status')}"
            extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
            out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n{extra}Connection: close\r\n\r\n"
            )
            writer.write(out.encode("latin-1") + response.body)
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz" and request.method == "GET":
            problems = self.check()
            body = json.dumps({"ok": not problems, "problems": problems}).encode()
            return HttpResponse(200 if not problems else 503, body, "application/json")
        if request.path == "/metrics" and request.method == "GET":
            return HttpResponse(200, self.metrics.render().encode(), "text/plain; version=0.0.4")
        route = self._route_for(request.path)
        if route is not None:
            return await route(request)
        if request.method != "GET":
            return HttpResponse(405, b"method not allowed\n")
        return HttpResponse(404, b"not found\n")
