"""A fleet of simulated Shelly plugs: one real HTTP server per plug on 127.0.0.1, optional mDNS.

Each :class:`SimPlug` serves the Gen1 REST or Gen2+ RPC API of its profile (``simdevice.SimDevice``
holds state and payloads), with ``Connection: close`` on every response as real plugs do. Tests drive
it through the Python API (``SimPlug.device``, ``inject``, ``move``…) or over HTTP under ``/__sim/``
(never authenticated, never faulted):

    GET /__sim/state                      truth: relay, power, counter, energy_mwh, timer, uptime
    GET /__sim/advance?s=60               advance the fleet clock (ManualClock or SimClock)
    GET /__sim/load?w=150 | ?profile=ev   attach a load
    GET /__sim/fault?kind=hang[&count=N][&s=2.5]   inject; kinds: see FAULTS
    GET /__sim/clear                      clear every fault
    GET /__sim/reboot | /__sim/trip       power-cycle / force an over-power trip
    GET /__sim/move[?port=N]              serve on a new port and re-advertise
    GET /__sim/log                        the request log (method, path, auth, status)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from chargectl.common.clock import Clock, SystemClock
from chargectl.shelly.auth import basic_header
from chargectl.shelly.simdevice import (
    LOAD_PROFILES,
    AuthVerdict,
    PlugProfile,
    PlugTruth,
    RpcFailure,
    SimDevice,
    challenge_header,
    challenge_message,
    make_profile,
)

__all__ = ["FAULTS", "RequestLogEntry", "SimClock", "SimFleet", "SimPlug", "build_profiles"]

log = logging.getLogger("chargectl.shelly.sim")

# latency: delay each answer by ``s`` real seconds; hang: accept and never answer; refuse: stop
# listening (connection refused); reset: close mid-request; unauthorized: 401 whatever the creds;
# throttle: 429; non_json: 200 with an HTML body; missing_fields: old-firmware payloads.
# Hostile answers (``/shelly`` stays honest unless said otherwise, so the plug can still be adopted):
# non_finite: status power ``NaN``, voltage ``Infinity``; huge_body: 200 with an endless body and no
# Content-Length (up to HUGE_BODY_BYTES); wrong_mac: every MAC in every answer, ``/shelly`` included,
# is another plug's (WRONG_MAC_OF).
FAULTS = (
    "latency",
    "hang",
    "refuse",
    "reset",
    "unauthorized",
    "throttle",
    "non_json",
    "missing_fields",
    "non_finite",
    "huge_body",
    "wrong_mac",
)
HUGE_BODY_BYTES = 200 * 1024 * 1024
_POWER_KEYS = frozenset({"apower", "power"})
_VOLTAGE_KEYS = frozenset({"voltage"})


def wrong_mac_of(mac: str) -> str:
    """The MAC a ``wrong_mac`` plug claims instead of ``mac`` (its last byte flipped)."""
    return mac[:-2] + f"{int(mac[-2:], 16) ^ 0xFF:02X}"


def _rewrite(value: Any, fn: Callable[[str, Any], Any]) -> Any:
    """``value`` with ``fn(key, v)`` applied to every dict entry, recursively."""
    if isinstance(value, dict):
        return {k: fn(k, _rewrite(v, fn)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, fn) for v in value]
    return value


HTTP_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
}


class SimClock:
    """A clock that follows ``base`` plus an offset that ``advance`` grows (time travel for the CLI sim)."""

    def __init__(self, base: Clock | None = None) -> None:
        self.base = base or SystemClock()
        self.offset = 0.0

    def now(self) -> float:
        return self.base.now() + self.offset

    def monotonic(self) -> float:
        return self.base.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self.offset += seconds

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One request a simulated plug received."""

    ts: float
    method: str
    path: str
    authorization: str | None
    json_auth: dict[str, Any] | None
    status: int


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(value, separators=(",", ":")).encode(), headers=headers or {})


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, text.encode(), "text/plain", headers or {})


def _query_value(text: str) -> Any:
    """Gen2 query strings are JSON scalars (``true``, ``5``); anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class SimPlug:
    """One simulated plug: a :class:`SimDevice` behind its own HTTP server."""

    def __init__(
        self,
        profile: PlugProfile,
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        load: str = "idle",
    ) -> None:
        self.device = SimDevice(profile, clock)
        self.device.set_load(profile=load)
        self.clock = clock
        self.host = host
        self.port = port
        self.faults: dict[str, int | None] = {}
        self.latency_s = 0.0
        self.log: list[RequestLogEntry] = []
        self._server: asyncio.Server | None = None
        self._unhang = asyncio.Event()
        self._conns: set[asyncio.StreamWriter] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.on_move: Callable[[SimPlug], Awaitable[None]] | None = None
        self.advance_clock: Callable[[float], None] | None = None

    @property
    def profile(self) -> PlugProfile:
        return self.device.profile

    @property
    def mac(self) -> str:
        return self.device.profile.mac

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def truth(self) -> PlugTruth:
        return self.device.truth()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            self._unhang.set()
            for writer in list(self._conns):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            self._unhang = asyncio.Event()

    async def stop(self) -> None:
        self.faults.pop("refuse", None)
        await self._close_server()

    async def move(self, port: int | None = None, host: str | None = None) -> None:
        """Serve from a new address (a DHCP move) and re-advertise it."""
        await self._close_server()
        new_host = host or self.host
        self._server = await asyncio.start_server(self._handle, new_host, port or 0, reuse_address=True)
        self.host, self.port = new_host, self._server.sockets[0].getsockname()[1]
        if self.on_move is not None:
            await self.on_move(self)

    # ---- faults --------------------------------------------------------------------------------

    async def inject(self, kind: str, count: int | None = None, seconds: float = 0.0) -> None:
        """Turn a fault on for the next ``count`` requests (None: until cleared)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        if kind == "latency":
            self.latency_s = seconds
        if kind == "missing_fields":
            self.device.missing_fields = True
            return
        self.faults[kind] = count
        if kind == "refuse":
            await self._close_server()

    async def clear(self) -> None:
        """Clear every fault (and start listening again if refusing)."""
        refused = "refuse" in self.faults
        self.faults.clear()
        self.latency_s = 0.0
        self.device.missing_fields = False
        self._unhang.set()
        self._unhang = asyncio.Event()
        if refused and self._server is None:
            await self.start()

    def _take(self, kind: str) -> bool:
        if kind not in self.faults:
            return False
        left = self.faults[kind]
        if left is not None:
            if left <= 1:
                del self.faults[kind]
            else:
                self.faults[kind] = left - 1
        return True

    # ---- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            req = await self._read(reader)
            if req is None:
                return
            if req.path.startswith("/__sim/"):
                resp = await self._control(req)
            else:
                if self.latency_s > 0 and "latency" in self.faults:
                    self._take("latency")
                    await asyncio.sleep(self.latency_s)
                if self._take("hang"):
                    await self._unhang.wait()
                    return
                if req.path != "/shelly" and self._take("huge_body"):
                    await self._write_huge(writer)
                    return
                if self._take("reset"):
                    transport = writer.transport
                    sock = transport.get_extra_info("socket")
                    if sock is not None:  # RST instead of FIN: SO_LINGER 0
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    transport.abort()
                    return
                resp = self._hostile(req, self._serve(req))
                self.log.append(
                    RequestLogEntry(
                        ts=self.clock.now(),
                        method=req.method,
                        path=req.target,
                        authorization=req.headers.get("authorization"),
                        json_auth=self._frame_auth(req),
                        status=resp.status,
                    )
                )
            await self._write(writer, resp)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._conns.discard(writer)
            writer.close()

    def _hostile(self, req: _Request, resp: _Response) -> _Response:
        """Apply the answer-rewriting faults (non_finite, wrong_mac) to a JSON answer."""
        if resp.status != 200 or not resp.content_type.startswith("application/json"):
            return resp
        rewrite_mac = self._take("wrong_mac")
        non_finite = req.path != "/shelly" and self._take("non_finite")
        if not (rewrite_mac or non_finite):
            return resp
        value = json.loads(resp.body)
        if rewrite_mac:
            wrong = wrong_mac_of(self.mac)
            value = _rewrite(value, lambda k, v: wrong if k == "mac" and isinstance(v, str) else v)
            if isinstance(value, dict) and isinstance(value.get("id"), str):
                value["id"] = value["id"].lower().replace(self.mac.lower(), wrong.lower())
        if non_finite:

            def bad(key: str, v: Any) -> Any:
                if isinstance(v, int | float) and not isinstance(v, bool):
                    if key in _POWER_KEYS:
                        return float("nan")
                    if key in _VOLTAGE_KEYS:
                        return float("inf")
                return v

            value = _rewrite(value, bad)
        return _Response(resp.status, json.dumps(value).encode(), resp.content_type, resp.headers)

    async def _write_huge(self, writer: asyncio.StreamWriter) -> None:
        """200 OK, no Content-Length, then JSON-ish bytes until HUGE_BODY_BYTES or the client hangs up."""
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        writer.write(head.encode("latin-1") + b'{"pad": "')
        chunk = b"x" * 65536
        for _ in range(HUGE_BODY_BYTES // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        return _Request(method.upper(), target, url.path, dict(parse_qsl(url.query)), headers, body)

    async def _write(self, writer: asyncio.StreamWriter, resp: _Response) -> None:
        reason = HTTP_REASONS.get(resp.status, "Error")
        headers = {
            "Server": "ShellyHTTP/1.0.0" if self.profile.gen >= 2 else "Mongoose/6.18",
            "Content-Type": resp.content_type,
            "Content-Length": str(len(resp.body)),
            "Connection": "close",
            **resp.headers,
        }
        head = f"HTTP/1.1 {resp.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode("latin-1") + b"\r\n" + resp.body)
        await writer.drain()

    def _frame_auth(self, req: _Request) -> dict[str, Any] | None:
        if req.path == "/rpc" and req.method == "POST":
            with contextlib.suppress(ValueError):
                frame = json.loads(req.body or b"{}")
                if isinstance(frame, dict) and isinstance(frame.get("auth"), dict):
                    return dict(frame["auth"])
        return None

    def _serve(self, req: _Request) -> _Response:
        dev = self.device
        if req.path == "/shelly" and req.method == "GET":  # never authenticated, never POST
            return _json(200, dev.shelly_info())
        if self._take("unauthorized"):
            return self._unauthorized(req, None)
        if self._take("throttle"):
            return _text(429, "Too many requests")
        if self._take("non_json"):
            return _Response(200, b"<html><body>Service Unavailable</body></html>", "text/html")
        if self.profile.gen == 1:
            return self._serve_gen1(req)
        return self._serve_gen2(req)

    def _unauthorized(self, req: _Request, verdict: AuthVerdict | None) -> _Response:
        if self.profile.gen == 1:
            realm = self.profile.device_id
            return _text(401, "401 Unauthorized", {"WWW-Authenticate": f'Basic realm="{realm}"'})
        if verdict is None:
            if self.device.digest is None:
                return _text(401, "")
            verdict = self.device.digest.verify_header(req.method, req.target, None)
        if verdict.throttled:
            return _text(429, verdict.throttled)
        assert verdict.challenge is not None
        headers = {"WWW-Authenticate": challenge_header(verdict.challenge)}
        if req.path == "/rpc":
            frame = {"id": 0, "src": self.profile.device_id}
            with contextlib.suppress(ValueError, AttributeError):
                frame["id"] = json.loads(req.body).get("id", 0)
            frame["error"] = {"code": 401, "message": challenge_message(verdict.challenge)}
            return _json(401, frame, headers)
        return _text(401, "", headers)

    # Gen1 ---------------------------------------------------------------------------------------

    def _serve_gen1(self, req: _Request) -> _Response:
        p = self.profile
        dev = self.device
        if p.password is not None:
            expected = basic_header(p.user, p.password)
            if req.headers.get("authorization") != expected:
                return self._unauthorized(req, None)
        path = req.path.rstrip("/") or "/"
        q = req.query
        if path == "/status":
            return _json(200, dev.gen1_status())
        if path == "/settings" or path == "/settings/relay/0":
            settings = dev.gen1_settings()
            return _json(200, settings if path == "/settings" else settings["relays"][0])
        if path == "/meter/0":
            return _json(200, dev.gen1_meter())
        if path == "/reboot":
            dev.reboot()
            return _json(200, {"ok": True})
        if path == "/relay/0":
            turn = q.get("turn")
            if turn is None:
                return _json(200, dev.gen1_relay())
            timer: float | None = None
            if "timer" in q:
                try:
                    timer = float(q["timer"])
                except ValueError:
                    return _text(400, "Bad timer!")
            if turn == "on":
                dev.switch(True, timer)
            elif turn == "off":
                dev.switch(False, timer)
            elif turn == "toggle":
                dev.switch(not dev.relay_on, timer)
            else:
                return _text(400, "Bad turn!")
            return _json(200, dev.gen1_relay())
        if path.startswith("/relay/"):
            return _text(404, "Not Found")
        return _text(404, "Not Found")

    # Gen2+ --------------------------------------------------------------------------------------

    def _serve_gen2(self, req: _Request) -> _Response:
        dev = self.device
        frame: dict[str, Any] | None = None
        if req.path == "/rpc" and req.method == "POST":
            try:
                parsed = json.loads(req.body or b"{}")
            except ValueError:
                return _json(400, {"code": -103, "message": "Bad request: invalid JSON"})
            if not isinstance(parsed, dict) or not isinstance(parsed.get("method"), str):
                return _json(400, {"code": -103, "message": "Bad request: missing method"})
            frame = parsed
            method = str(parsed["method"])
            params = parsed.get("params") or {}
        elif req.path.startswith("/rpc/"):
            method = req.path[len("/rpc/") :]
            if req.method == "POST" and req.body:
                try:
                    params = json.loads(req.body)
                except ValueError:
                    return _json(400, {"code": -103, "message": "Bad request: invalid JSON"})
            else:
                params = {k: _query_value(v) for k, v in req.query.items()}
        else:
            return _text(404, "Not Found")
        if not isinstance(params, dict):
            return _json(400, {"code": -103, "message": "Bad request: params must be an object"})
        if dev.digest is not None and method != "Shelly.GetDeviceInfo":
            header = req.headers.get("authorization")
            if frame is not None and isinstance(frame.get("auth"), dict):
                verdict = dev.digest.verify_json(frame["auth"])
            else:
                verdict = dev.digest.verify_header(req.method, req.target, header)
            if not verdict.ok:
                return self._unauthorized(req, verdict)
        try:
            result = dev.rpc(method, params)
        except RpcFailure as exc:
            error = {"code": exc.code, "message": exc.message}
            if frame is not None:
                return _json(
                    exc.status, {"id": frame.get("id"), "src": self.profile.device_id, "error": error}
                )
            return _json(exc.status, error)
        if frame is not None:
            out: dict[str, Any] = {"id": frame.get("id"), "src": self.profile.device_id}
            if "src" in frame:
                out["dst"] = frame["src"]
            out["result"] = result
            return _json(200, out)
        return _json(200, result)

    # control ------------------------------------------------------------------------------------

    async def _control(self, req: _Request) -> _Response:
        action = req.path[len("/__sim/") :].strip("/")
        q = req.query
        try:
            if action == "state":
                return _json(200, self.state())
            if action == "log":
                return _json(200, [asdict(e) for e in self.log])
            if action == "advance":
                if self.advance_clock is None:
                    return _text(400, "this fleet's clock cannot be advanced")
                self.advance_clock(float(q.get("s", "0")))
                return _json(200, self.state())
            if action == "load":
                self.device.set_load(
                    watts=float(q["w"]) if "w" in q else None, profile=q.get("profile") or None
                )
                return _json(200, self.state())
            if action == "fault":
                count = int(q["count"]) if "count" in q else None
                await self.inject(q.get("kind", ""), count, float(q.get("s", "0")))
                return _json(200, {"faults": sorted(self.faults)})
            if action == "clear":
                await self.clear()
                return _json(200, {"faults": []})
            if action == "reboot":
                self.device.reboot()
                return _json(200, self.state())
            if action == "trip":
                self.device.advance()
                self.device._trip(self.device.power_w())
                return _json(200, self.state())
            if action == "move":
                port = int(q["port"]) if "port" in q else None
                # answer first, then move: this very connection is served by the old listener
                task = asyncio.get_running_loop().create_task(self._move_soon(port))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return _json(200, {"moving": True})
        except (ValueError, KeyError) as exc:
            return _text(400, f"bad control request: {exc}")
        return _text(404, f"unknown control {action!r}")

    async def _move_soon(self, port: int | None) -> None:
        await asyncio.sleep(0.05)
        await self.move(port)

    def state(self) -> dict[str, Any]:
        """Truth plus identity, as JSON-able data."""
        t = self.truth()
        return {
            "mac": self.mac,
            "gen": self.profile.gen,
            "model": self.profile.model,
            "host": self.host,
            "port": self.port,
            "load": self.device.load.name if self.device.fixed_load_w is None else self.device.fixed_load_w,
            **asdict(t),
            "now": self.clock.now(),
            "faults": sorted(self.faults) + (["missing_fields"] if self.device.missing_fields else []),
        }


def _random_mac(rng: random.Random) -> str:
    return "".join(f"{rng.randrange(256):02X}" for _ in range(6))


def build_profiles(
    n: int, gen: str = "mix", *, password: str | None = None, seed: int | None = None
) -> list[PlugProfile]:
    """``n`` plug profiles: gen "1".."4" or "mix" (cycling 1, 2, 3, 4), random distinct MACs."""
    if n < 1:
        raise ValueError("need at least one plug")
    rng = random.Random(seed)
    gens = [1, 2, 3, 4] if gen == "mix" else [int(gen)]
    macs: set[str] = set()
    profiles = []
    for i in range(n):
        mac = _random_mac(rng)
        while mac in macs:
            mac = _random_mac(rng)
        macs.add(mac)
        profiles.append(make_profile(gens[i % len(gens)], mac, password=password))
    return profiles


def _load_names(profile: str, n: int) -> list[str]:
    if profile == "mix":
        names = ["ev", "ebike", "idle"]
        return [names[i % 3] for i in range(n)]
    if profile not in LOAD_PROFILES:
        raise ValueError(f"unknown load profile {profile!r} (ev, ebike, idle, mix)")
    return [profile] * n


class SimFleet:
    """N simulated plugs in one process, each on its own port, optionally advertised over mDNS.

    ``interfaces`` (e.g. ``["127.0.0.1"]``) turns mDNS on; ``None`` leaves it off. Use as an async
    context manager or call ``start()``/``stop()``.
    """

    def __init__(
        self,
        profiles: Sequence[PlugProfile],
        *,
        clock: Clock | None = None,
        loads: Sequence[str] | str = "idle",
        interfaces: Sequence[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.clock: Clock = clock or SimClock()
        names = _load_names(loads, len(profiles)) if isinstance(loads, str) else list(loads)
        self.plugs = [
            SimPlug(p, self.clock, host=host, load=name) for p, name in zip(profiles, names, strict=True)
        ]
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.impostors: list[SimPlug] = []
        self._zc: Any = None
        self._infos: dict[str, list[Any]] = {}
        for plug in self.plugs:
            plug.on_move = self._readvertise
            plug.advance_clock = self.advance

    @classmethod
    def build(
        cls,
        n: int,
        gen: str = "mix",
        *,
        profile: str = "idle",
        password: str | None = None,
        clock: Clock | None = None,
        interfaces: Sequence[str] | None = None,
        seed: int | None = None,
        host: str = "127.0.0.1",
    ) -> SimFleet:
        """A fleet of ``n`` plugs of generation ``gen`` with load ``profile`` (ev, ebike, idle, mix)."""
        return cls(
            build_profiles(n, gen, password=password, seed=seed),
            clock=clock,
            loads=_load_names(profile, n),
            interfaces=interfaces,
            host=host,
        )

    def advance(self, seconds: float) -> None:
        """Advance the fleet's clock (a ManualClock or SimClock) and bring every plug up to date."""
        advance = getattr(self.clock, "advance", None)
        if advance is None:
            raise ValueError("this fleet's clock cannot be advanced")
        advance(seconds)
        for plug in self.plugs:
            plug.device.advance()

    async def impostor(self, of: SimPlug, *, host: str | None = None) -> SimPlug:
        """Start a device claiming ``of``'s MAC (same model) on another port; not advertised, stopped with the fleet."""
        fake = SimPlug(of.profile, self.clock, host=host or of.host, load="idle")
        await fake.start()
        self.impostors.append(fake)
        return fake

    def plug(self, mac: str) -> SimPlug:
        for plug in self.plugs:
            if plug.mac == mac.upper():
                return plug
        raise KeyError(mac)

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every HTTP server, then register all mDNS services concurrently."""
        try:
            for plug in self.plugs:
                await plug.start()
            if self.interfaces is not None:
                from zeroconf.asyncio import AsyncZeroconf

                self._zc = AsyncZeroconf(interfaces=self.interfaces)
                await asyncio.gather(*(self._advertise(plug) for plug in self.plugs))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_unregister_all_services()
            await self._zc.async_close()
            self._zc = None
        for plug in [*self.plugs, *self.impostors]:
            await plug.stop()

    def _service_infos(self, plug: SimPlug) -> list[Any]:
        from zeroconf.asyncio import AsyncServiceInfo

        p = plug.profile
        name = p.device_id
        server = f"{name.lower()}.local."
        addresses = [socket.inet_aton(plug.host)]
        if p.gen == 1:
            props: dict[str, str] = {
                "id": name,
                "arch": "esp8266",
                "app": p.app,
                "fw_version": "1.0",
                "fw_id": p.firmware,
            }
            types = ["_http._tcp.local."]
        else:
            props = {"gen": str(p.gen), "app": p.app, "ver": p.ver, "id": name}
            types = ["_http._tcp.local.", "_shelly._tcp.local."]
        return [
            AsyncServiceInfo(
                t, f"{name}.{t}", addresses=addresses, port=plug.port, properties=props, server=server
            )
            for t in types
        ]

    async def _advertise(self, plug: SimPlug) -> None:
        infos = self._service_infos(plug)
        self._infos[plug.mac] = infos
        tasks = [await self._zc.async_register_service(info) for info in infos]
        await asyncio.gather(*tasks)

    async def _readvertise(self, plug: SimPlug) -> None:
        if self._zc is None:
            return
        old = self._infos.pop(plug.mac, [])
        for info in old:
            await (await self._zc.async_unregister_service(info))
        await self._advertise(plug)


def parse_plug_state(data: Mapping[str, Any]) -> PlugTruth:
    """Turn ``/__sim/state`` JSON back into a :class:`PlugTruth`."""
    keys = PlugTruth.__dataclass_fields__.keys()
    return PlugTruth(**{k: data[k] for k in keys})
