"""``/healthz`` and Prometheus ``/metrics`` on a loopback port (stdlib asyncio, no framework).

``Metrics`` is a facade over a prometheus_client ``CollectorRegistry``: ``inc`` (counters, exported
with ``_total``), ``set`` (gauges), ``observe`` (histograms), ``gauge_probe`` (values computed at
scrape time), ``value`` (read one sample back) and ``render`` (the text exposition). Every family of
:mod:`chargectl.services.metrics` is declared up front with its HELP and known label values, so a
labelled counter reads 0 before its first event; process metrics (CPU, memory, fds, GC) come along.
Other components serve pages on the same port through :meth:`HealthServer.mount` (a path prefix and
an async handler of :class:`HttpRequest` → :class:`HttpResponse`); /healthz and /metrics stay the
server's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chargectl.services.metrics import CATALOGUE, MetricSpec, spec_for

__all__ = ["HealthServer", "HttpRequest", "HttpResponse", "Metrics", "Route"]

log = logging.getLogger("chargectl.metrics")

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
# Connections served at once: per peer address, and in all. Beyond either, a connection is answered 503
# at once and closed: a host on the LAN that opens connections and sends nothing (each held until the
# header deadline) can neither run the hub out of file descriptors (Pub/Sub and Firestore need them)
# nor shut out the other clients (a probe, the scraper, the operator's browser).
MAX_CONNECTIONS_PER_PEER = 32
MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 5.0

Labels = tuple[tuple[str, str], ...]
Probe = Callable[[], Mapping[Labels, float]]

# ``*_created`` series double every counter and no dashboard or rule here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _ProbeCollector(Collector):
    """A family whose samples a callable computes at scrape time (known label values default to 0)."""

    def __init__(self, full: str, spec: MetricSpec, probe: Probe) -> None:
        self.full = full
        self.spec = spec
        self.probe = probe

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        labels = list(self.spec.labels)
        if self.spec.kind == "counter":
            return CounterMetricFamily(self.full.removesuffix("_total"), self.spec.help, labels=labels)
        return GaugeMetricFamily(self.full, self.spec.help, labels=labels)

    def samples(self) -> dict[Labels, float]:
        values = {key: 0.0 for key in _known_keys(self.spec)}
        values.update({tuple(sorted(k)): float(v) for k, v in self.probe().items()})
        return values

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            values = self.samples()
        except Exception:  # a probe must not take /metrics down with it
            log.exception("metric probe %s failed", self.full)
            return [family]
        names = list(self.spec.labels)
        for key, value in sorted(values.items()):
            got = dict(key)
            if set(got) != set(names):
                continue
            family.add_metric([got[n] for n in names], value)
        return [family]


def _known_keys(spec: MetricSpec) -> list[Labels]:
    """Every label combination the spec knows in advance (the empty one for an unlabelled family)."""
    if not spec.labels:
        return [()]
    if any(name not in spec.known for name in spec.labels):
        return []
    combos = itertools.product(*(spec.known[name] for name in spec.labels))
    return [tuple(sorted(zip(spec.labels, combo, strict=True))) for combo in combos]


@dataclass
class _Family:
    spec: MetricSpec
    metric: Counter | Gauge | Histogram | None = None
    probe: _ProbeCollector | None = None


class Metrics:
    """Counters, gauges and histograms by name and labels, in a prometheus_client registry.

    Call sites name counters with or without ``_total``; families not in the catalogue are created on
    first use (their label names from that call). An update whose labels do not match its family is
    refused and counted in ``metrics_label_errors_total`` (never raised into the caller's loop).
    ``set`` on a histogram records an observation and ``inc`` of a histogram's ``_sum``/``_count`` is
    ignored, so older call sites keep working.
    """

    def __init__(
        self,
        prefix: str = "chargectl_",
        *,
        catalogue: Iterable[MetricSpec] = CATALOGUE,
        process_metrics: bool = True,
    ) -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._families: dict[str, _Family] = {}
        self._lock = threading.RLock()
        self._warned: set[str] = set()
        self._counters: dict[tuple[object, ...], Counter] = {}  # (name, *labels) -> resolved child
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        for spec in catalogue:
            self._declare(spec)

    # ------------------------------------------------------------------ families

    def _declare(self, spec: MetricSpec) -> _Family:
        with self._lock:
            fam = self._families.get(spec.name)
            if fam is not None:
                return fam
            fam = self._families[spec.name] = _Family(spec)
            self._materialise(fam)
            return fam

    def _materialise(self, fam: _Family) -> None:
        spec = fam.spec
        full = self.prefix + spec.name
        metric: Counter | Gauge | Histogram
        if spec.kind == "counter":
            metric = Counter(full, spec.help, spec.labels, registry=self.registry)
        elif spec.kind == "gauge":
            metric = Gauge(full, spec.help, spec.labels, registry=self.registry)
        else:
            metric = Histogram(full, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)
        for key in _known_keys(spec):
            if key:
                metric.labels(**dict(key))
        fam.metric = metric

    def _lookup(self, name: str) -> _Family | None:
        fam = self._families.get(name) or self._families.get(name + "_total")
        if fam is not None:
            return fam
        spec = spec_for(name)
        return self._families.get(spec.name) if spec is not None else None

    def _family(self, name: str, kind: str, help_text: str, labels: Mapping[str, str]) -> _Family:
        fam = self._lookup(name)
        if fam is not None:
            return fam
        exported = name if kind != "counter" or name.endswith("_total") else name + "_total"
        if kind != "counter":
            exported = exported.removesuffix("_total")
        text = help_text or exported.replace("_", " ").capitalize()
        spec = MetricSpec(exported, kind, text, tuple(sorted(labels)))  # type: ignore[arg-type]
        return self._declare(spec)

    def _child(
        self, fam: _Family, name: str, labels: Mapping[str, str]
    ) -> Counter | Gauge | Histogram | None:
        metric = fam.metric
        if metric is None:
            self._refuse(fam.spec.name, f"{name} is computed at scrape time")
            return None
        if set(labels) != set(fam.spec.labels):
            self._refuse(fam.spec.name, f"{name} takes labels {list(fam.spec.labels)}, got {sorted(labels)}")
            return None
        return metric.labels(**labels) if labels else metric

    def _refuse(self, family: str, why: str) -> None:
        if family not in self._warned:
            self._warned.add(family)
            log.warning("metric update refused: %s", why)
        if family != "metrics_label_errors_total":
            self.inc("metrics_label_errors_total", family=family)

    # ------------------------------------------------------------------ the facade

    def counter(self, name: str, help_text: str = "") -> None:
        """Declare an unlabelled counter (exported with ``_total``)."""
        self._family(name, "counter", help_text, {})

    def inc(self, name: str, amount: float = 1.0, help_text: str = "", **labels: str) -> None:
        key = (name, *labels.items())
        cached = self._counters.get(key)
        if cached is not None and amount >= 0:  # the hot path: a counter already resolved
            cached.inc(amount)
            return
        with self._lock:
            for suffix in ("_sum", "_count"):
                base = self._lookup(name.removesuffix(suffix)) if name.endswith(suffix) else None
                if base is not None and base.spec.kind == "histogram":
                    return  # the histogram keeps its own sum and count
            fam = self._family(name, "counter", help_text, labels)
            if fam.spec.kind != "counter":
                self._refuse(fam.spec.name, f"{name} is a {fam.spec.kind}, not a counter")
                return
            child = self._child(fam, name, labels)
        if isinstance(child, Counter):
            if amount < 0:
                self._refuse(fam.spec.name, f"{name} cannot go down ({amount})")
                return
            child.inc(amount)
            if len(self._counters) < 10_000:
                self._counters[key] = child

    def set(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        with self._lock:
            fam = self._family(name, "gauge", help_text, labels)
            child = self._child(fam, name, labels)
        if isinstance(child, Histogram):
            child.observe(value)
        elif isinstance(child, Gauge):
            child.set(value)
        elif child is not None:
            self._refuse(fam.spec.name, f"{name} is a counter; use inc")

    def observe(self, name: str, value: float, help_text: str = "", **labels: str) -> None:
        """Record one observation in a histogram (e.g. a latency in seconds)."""
        with self._lock:
            fam = self._family(name, "histogram", help_text, labels)
            child = self._child(fam, name, labels)
        if isinstance(child, Histogram):
            child.observe(value)
        elif child is not None:
            self._refuse(fam.spec.name, f"{name} is a {fam.spec.kind}, not a histogram")

    def gauge_probe(self, name: str, probe: Probe, help_text: str = "") -> None:
        """A family computed at scrape time (e.g. plugs by state); a catalogue counter stays a counter."""
        with self._lock:
            fam = self._lookup(name)
            if fam is None:
                sample = dict(probe())
                label_names = tuple(sorted(dict(next(iter(sample), ()))))
                text = help_text or name.replace("_", " ").capitalize()
                fam = self._families[name] = _Family(MetricSpec(name, "gauge", text, label_names))
            if fam.probe is not None:
                fam.probe.probe = probe
                return
            if fam.metric is not None:
                self.registry.unregister(fam.metric)
                fam.metric = None
                self._counters.clear()
            fam.probe = _ProbeCollector(self.prefix + fam.spec.name, fam.spec, probe)
            self.registry.register(fam.probe)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 if it does not exist); a histogram's name gives its count."""
        fam = self._lookup(name)
        key = tuple(sorted(labels.items()))
        if fam is not None and fam.probe is not None:
            try:
                return fam.probe.samples().get(key, 0.0)
            except Exception:
                return 0.0
        sample = self.prefix + name
        if fam is not None:
            sample = self.prefix + fam.spec.name
            if fam.spec.kind == "histogram" and name == fam.spec.name:
                sample += "_count"
        found = self.registry.get_sample_value(sample, dict(labels))
        return float(found) if found is not None else 0.0

    def render(self) -> str:
        return generate_latest(self.registry).decode()


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
        self,
        metrics: Metrics,
        check: Callable[[], list[str]],
        host: str = "127.0.0.1",
        port: int = 0,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.metrics = metrics
        self.check = check
        self.host = host
        self.port = port
        self.header_timeout_s = header_timeout_s
        self.refused_connections = 0  # answered 503 at once: over a connection limit
        self._server: asyncio.Server | None = None
        self._routes: dict[str, Route] = {}
        self._open: dict[str, int] = {}  # peer address -> connections being served
        self._open_total = 0

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
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        open_now = self._open.get(address, 0)
        if open_now >= MAX_CONNECTIONS_PER_PEER or self._open_total >= MAX_CONNECTIONS:
            self.refused_connections += 1
            with contextlib.suppress(Exception):
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                writer.close()
            return
        self._open[address] = open_now + 1
        self._open_total += 1
        try:
            await self._serve(reader, writer, address)
        finally:
            self._open_total -= 1
            left = self._open.get(address, 1) - 1
            if left > 0:
                self._open[address] = left
            else:
                self._open.pop(address, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=self.header_timeout_s)
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
            declared = headers.get("content-length", "0") or "0"
            length = int(declared) if declared.isascii() and declared.isdigit() else -1
            if length < 0 or "transfer-encoding" in headers:
                response = HttpResponse(400, b"bad Content-Length (or a Transfer-Encoding)\n")
            elif length > MAX_BODY_BYTES:
                response = HttpResponse(413, b"request body too large\n")
            else:
                body = (
                    await asyncio.wait_for(reader.readexactly(length), timeout=self.header_timeout_s)
                    if length
                    else b""
                )
                request = HttpRequest(
                    method, target.path, dict(parse_qsl(target.query)), headers, body, address
                )
                try:
                    response = await self._respond(request)
                except Exception:  # a bug in a route: this request fails, the server goes on
                    log.exception("health server: %s %s failed", method, target.path)
                    response = HttpResponse(500, b"internal error\n")
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
