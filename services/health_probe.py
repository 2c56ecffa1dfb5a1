"""Ask a running hub (or ``run``, or agent) for its ``/healthz`` — what ``chargectl hub check``, the demo
and the benchmark use. Every failure becomes one line naming its real cause."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

__all__ = ["Health", "health_url", "probe_health"]


@dataclass(frozen=True)
class Health:
    ok: bool
    url: str
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "problems": list(self.problems), "url": self.url}


def health_url(host: str, port: int, path: str = "/healthz") -> str:
    """``http://host:port/healthz`` (an IPv6 literal bracketed)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{port}{path}"


def _cause(exc: BaseException, url: str, timeout_s: float) -> str:
    import httpx

    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return f"invalid address {url}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} within {timeout_s:g} s"
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, socket.gaierror):
            return f"cannot resolve the host of {url}"
        if isinstance(inner, ConnectionRefusedError):
            return f"{url} refused the connection (is it running?)"
        inner = inner.__cause__ or inner.__context__
    text = str(exc).lower()
    if "name or service not known" in text or "nodename nor servname" in text:
        return f"cannot resolve the host of {url}"
    if "refused" in text:
        return f"{url} refused the connection (is it running?)"
    return f"no answer from {url}: {type(exc).__name__}"


def probe_health(url: str, timeout_s: float = 5.0) -> Health:
    """GET ``url``: healthy when it answers 200 with ``{"ok": true}``; otherwise the problems it lists
    or why it could not be asked."""
    import httpx

    try:
        resp = httpx.get(url, timeout=timeout_s)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
        return Health(False, url, [_cause(exc, url, timeout_s)])
    try:
        body = resp.json()
    except ValueError:
        return Health(False, url, [f"{url} answered HTTP {resp.status_code} without a health report"])
    if not isinstance(body, dict):
        return Health(False, url, [f"{url} answered HTTP {resp.status_code} without a health report"])
    problems = [str(p) for p in body.get("problems", []) or []]
    ok = resp.status_code == 200 and body.get("ok") is True
    if not ok and not problems:
        problems = [f"{url} answered HTTP {resp.status_code}"]
    return Health(ok, url, problems)
