"""``/healthz`` and Prometheus-style ``/metrics`` on a loopback port (stdlib asyncio, no framework).

``Metrics`` is a small registry of counters and gauges with optional labels; the hub updates it and
the server renders it in the Prometheus text format. Gauges may be callables evaluated at scrape time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["HealthServer", "Metrics"]

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


class HealthServer:
    """Serves ``GET /healthz`` (200 when ``check()`` is empty, else 503 with the problems) and ``/metrics``."""

    def __init__(
        self, metrics: Metrics, check: Callable[[], list[str]], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.metrics = metrics
        self.check = check
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

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
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = request.split(b"\r\n", 1)[0].split()
            path = parts[1].decode(errors="replace").split("?", 1)[0] if len(parts) >= 2 else ""
            if parts and parts[0] != b"GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
            elif path == "/healthz":
                problems = self.check()
                status = "200 OK" if not problems else "503 Service Unavailable"
                ctype, body = (
                    "application/json",
                    json.dumps({"ok": not problems, "problems": problems}).encode(),
                )
            elif path == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", self.metrics.render().encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
