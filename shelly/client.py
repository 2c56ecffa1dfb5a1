"""The async Shelly device client (httpx): generation detection, reading, switching, auth, errors.

One :class:`ShellyClient` per device. Every request to the device goes through one lock (at most one
in flight: Gen2 has no keep-alive, few HTTP channels and a fw-2.0 nonce table that punishes parallel
requests) and one hard per-request timeout. httpx errors become ``DeviceError`` subclasses here and
nowhere else; RPC error bodies are read even on non-2xx statuses. The hot poll (:meth:`ShellyClient.read`)
skips httpx for the lean GET of ``chargectl.shelly.http11`` (same bounds, errors, auth and MAC rules).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

import httpx

from chargectl.common.clock import Clock, SystemClock
from chargectl.common.errors import (
    DeviceAuthError,
    DeviceBusyError,
    DeviceError,
    DeviceMismatchError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    InvalidResponse,
)
from chargectl.common.readings import Reading, normalize_mac
from chargectl.shelly import parse
from chargectl.shelly.auth import Challenge, DigestState, basic_header, parse_json_challenge
from chargectl.shelly.http11 import HttpReply, PollConnection

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "ShellyClient", "fetch_info"]

log = logging.getLogger("chargectl.shelly")

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024  # a Gen2 full status is a few KiB; anything near this is hostile


def _qs(params: Mapping[str, Any]) -> str:
    """Gen2 query values are JSON scalars: ``on=true``, ``toggle_after=60``; strings go bare."""
    parts = []
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"{quote(key)}={quote(text, safe='')}")
    return "&".join(parts)


async def _exchange(
    http: httpx.AsyncClient,
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> HttpReply:
    """One HTTP exchange; the body is read in chunks and abandoned past ``max_bytes`` (decoded)."""
    where = f"{host}:{port}"
    path = target.split("?")[0]
    try:
        async with (
            asyncio.timeout(timeout_s),
            http.stream(
                method,
                f"http://{where}{target}",
                headers=dict(headers or {}),
                content=body,
                timeout=timeout_s,
            ) as resp,
        ):
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise InvalidResponse(
                    f"{where}{path} announced a {int(declared)}-byte answer (limit {max_bytes} bytes)"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidResponse(f"{where}{path} sent more than {max_bytes} bytes; stopped reading")
                chunks.append(chunk)
            return HttpReply(resp.status_code, resp.headers, b"".join(chunks))
    except (TimeoutError, httpx.TimeoutException):
        raise DeviceTimeoutError(
            f"{where} did not answer {target.split('?')[0]} within {timeout_s:g} s"
        ) from None
    except httpx.ConnectError as exc:
        raise DeviceUnreachableError(f"{where} {connect_failure(exc)}") from None
    except httpx.InvalidURL:
        raise DeviceUnreachableError(f"{where} is not a valid address") from None
    except httpx.TransportError as exc:
        raise DeviceUnreachableError(f"{where} dropped the connection ({type(exc).__name__})") from None


def connect_failure(exc: BaseException) -> str:
    """Why a connection failed, from the OS error under httpx's: resolve, refused, unreachable."""
    import errno
    import socket

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return f"cannot be resolved ({seen.strerror or seen})"
        if isinstance(seen, ConnectionRefusedError):
            return "refused the connection (nothing listens on that port)"
        if isinstance(seen, OSError) and seen.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"is unreachable ({seen.strerror})"
        if isinstance(seen, OSError) and seen.errno is not None:
            return f"cannot be connected to ({seen.strerror or seen})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "Name or service not known" in text or "nodename nor servname" in text:
        return f"cannot be resolved ({text})"
    return f"cannot be connected to ({text or type(exc).__name__})"


async def fetch_info(
    host: str,
    port: int = 80,
    *,
    timeout_s: float = 5.0,
    http: httpx.AsyncClient | None = None,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> parse.DeviceInfo:
    """``GET /shelly`` (never authenticated) → :class:`parse.DeviceInfo`."""
    own = http is None
    client = http or httpx.AsyncClient(trust_env=False)
    try:
        reply = await _exchange(
            client, host, port, "GET", "/shelly", timeout_s=timeout_s, max_bytes=max_response_bytes
        )
    finally:
        if own:
            await client.aclose()
    if reply.status != 200:
        raise InvalidResponse(f"{host}:{port}/shelly answered HTTP {reply.status}")
    return parse.parse_device_info(parse.parse_json(reply.body, f"{host}:{port}/shelly"))


class ShellyClient:
    """One Shelly device, either generation. Build it with :meth:`connect`."""

    max_throttle_retries = 3
    throttle_backoff_s = 2.0  # fw 2.0 throttles for 2 s; back off at least that long

    def __init__(
        self,
        host: str,
        port: int,
        info: parse.DeviceInfo,
        *,
        password: str | None = None,
        user: str | None = None,
        timeout_s: float = 5.0,
        clock: Clock | None = None,
        rpc_mode: Literal["get", "frame"] = "get",
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.host = host
        self.max_response_bytes = max_response_bytes
        self.port = port
        self.info = info
        self.timeout_s = timeout_s
        self.clock: Clock = clock or SystemClock()
        self.rpc_mode = rpc_mode
        self.switchable = info.switchable
        self._password = password
        self._user = user or "admin"
        # Two lanes, each with its own lock and digest nonce (so each lane's nc values go out in
        # order): the poll over its lean connection, and everything else (switching, identify, the
        # relay read-back), which opens connections of its own and never waits behind a poll.
        self._digest = DigestState(password) if (password is not None and info.gen >= 2) else None
        self._lock = asyncio.Lock()
        self._poll_digest = DigestState(password) if (password is not None and info.gen >= 2) else None
        self._poll_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=0), transport=transport, trust_env=False
        )
        # The hot poll (read) skips httpx: one lean connection, kept alive when the device allows.
        # With an injected httpx transport (tests' mock devices) everything stays on httpx.
        self._poll = PollConnection(host, port) if transport is None else None
        self._frame_id = 0
        self._src = f"chargectl-{uuid.uuid4().hex[:8]}"

    # ---- identity ------------------------------------------------------------------------------

    @property
    def mac(self) -> str:
        return self.info.mac

    @property
    def gen(self) -> int:
        return self.info.gen

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def firmware(self) -> str:
        return self.info.firmware

    @property
    def auth(self) -> bool:
        return self.info.auth

    @property
    def name(self) -> str | None:
        return self.info.name

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def move(self, host: str, port: int = 80) -> None:
        """The plug got a new address (mDNS said so); the next request goes there, MAC re-checked."""
        self.host = host
        self.port = port
        if self._poll is not None:
            self._poll.move(host, port)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int = 80,
        *,
        password: str | None = None,
        user: str | None = None,
        timeout_s: float = 5.0,
        clock: Clock | None = None,
        mac: str | None = None,
        rpc_mode: Literal["get", "frame"] = "get",
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> ShellyClient:
        """Identify the device with ``GET /shelly`` and return a client for its generation.

        ``mac`` (any format) makes the call fail with ``DeviceMismatchError`` if another device answers.
        A device with auth on and no ``password`` is refused up front with ``DeviceAuthError``.
        """
        async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
            info = await fetch_info(
                host, port, timeout_s=timeout_s, http=http, max_response_bytes=max_response_bytes
            )
        if mac is not None and normalize_mac(mac) != info.mac:
            raise DeviceMismatchError(f"{host}:{port} is plug {info.mac}, not {normalize_mac(mac)}")
        if info.auth and password is None:
            raise DeviceAuthError(
                f"plug {info.mac} at {host}:{port} has authentication enabled: give its password "
                "(--password or CHARGECTL_SHELLY_PASSWORD)"
            )
        client = cls(
            host,
            port,
            info,
            password=password,
            user=user,
            timeout_s=timeout_s,
            clock=clock,
            rpc_mode=rpc_mode,
            transport=transport,
            max_response_bytes=max_response_bytes,
        )
        if info.gen >= 2:
            try:
                # In the poll's lane: its nonce (and, with keep-alive, its connection) goes on to the polls.
                status = await client._rpc("Shelly.GetStatus", None, lean=True)
                switches, meters = parse.gen2_components(status)
            except BaseException:
                await client.aclose()
                raise
            client.switchable = bool(switches)
            if not switches and not meters:
                await client.aclose()
                raise InvalidResponse(f"plug {info.mac} has neither a switch nor a power meter")
        return client

    async def aclose(self) -> None:
        if self._poll is not None:
            self._poll.close()
        await self._http.aclose()

    async def __aenter__(self) -> ShellyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- transport with auth -------------------------------------------------------------------

    async def _send(
        self, method: str, target: str, body: bytes | None = None, *, lean: bool = False
    ) -> HttpReply:
        """One logical request: auth, stale re-challenge, 429 back-off. Caller holds the lock.

        ``lean``: a ``GET`` over the poll connection instead of httpx (same bounds and errors)."""
        poll = self._poll if lean and method == "GET" and body is None else None
        digest = self._poll_digest if lean else self._digest
        challenges = 0
        throttled = 0
        backoff = self.throttle_backoff_s
        while True:
            headers: dict[str, str] = {}
            sent_auth = False
            if body is not None:
                headers["Content-Type"] = "application/json"
            if self.gen == 1 and self._password is not None:
                # Basic auth is the password in clear: send it only to an address whose /shelly
                # (unauthenticated) says it is still our plug, checked right before.
                await self._require_own_mac(poll)
                headers["Authorization"] = basic_header(self._user, self._password)
                sent_auth = True
            elif digest is not None and digest.challenge is not None:
                headers["Authorization"] = digest.header(method, target)
                sent_auth = True
            try:
                if poll is not None:
                    reply = await poll.get(
                        target, timeout_s=self.timeout_s, headers=headers, max_bytes=self.max_response_bytes
                    )
                else:
                    reply = await _exchange(
                        self._http,
                        self.host,
                        self.port,
                        method,
                        target,
                        timeout_s=self.timeout_s,
                        headers=headers,
                        body=body,
                        max_bytes=self.max_response_bytes,
                    )
            except BaseException:
                if digest is not None and sent_auth:
                    # Unanswered (timeout, dropped, cancelled): the device may or may not have counted
                    # this nc, and firmware 2.0 refuses the next one out of order as a bad password.
                    # Start over on a fresh nonce instead.
                    digest.forget()
                raise
            if reply.status == 429:
                if digest is not None:
                    digest.forget()  # the device may have dropped our nonce
                throttled += 1
                if throttled > self.max_throttle_retries:
                    text = reply.body[:80].decode("utf-8", "replace").strip() or "Too Many Requests"
                    raise DeviceBusyError(
                        f"plug {self.mac} at {self.where} kept answering 429 ({text}) after {throttled - 1} back-offs"
                    )
                log.debug("plug %s answered 429, backing off %.1f s", self.mac, backoff)
                await self.clock.sleep(backoff)
                backoff *= 2
                continue
            if reply.status == 401:
                challenge = self._challenge_from(reply)
                if self._password is None:
                    raise DeviceAuthError(
                        f"plug {self.mac} at {self.where} requires a password "
                        "(--password or CHARGECTL_SHELLY_PASSWORD)"
                    )
                if self.gen == 1 or challenge is None:
                    raise DeviceAuthError(
                        f"plug {self.mac} at {self.where} rejected the credentials for {self._user!r}"
                    )
                if sent_auth and not challenge.stale:
                    raise DeviceAuthError(f"plug {self.mac} at {self.where} rejected the password for admin")
                challenges += 1
                if challenges > 3:
                    raise DeviceAuthError(f"plug {self.mac} at {self.where} keeps re-challenging; giving up")
                assert digest is not None
                digest.adopt(challenge)
                continue
            return reply

    async def _require_own_mac(self, poll: PollConnection | None = None) -> None:
        if poll is not None:
            reply = await poll.get("/shelly", timeout_s=self.timeout_s, max_bytes=self.max_response_bytes)
            if reply.status != 200:
                raise InvalidResponse(f"{self.where}/shelly answered HTTP {reply.status}")
            info = parse.parse_device_info(parse.parse_json(reply.body, f"{self.where}/shelly"))
        else:
            info = await fetch_info(
                self.host,
                self.port,
                timeout_s=self.timeout_s,
                http=self._http,
                max_response_bytes=self.max_response_bytes,
            )
        if info.mac != self.mac:
            raise DeviceMismatchError(
                f"{self.where} is now plug {info.mac}, not {self.mac}; not sending it the password"
            )

    def _challenge_from(self, reply: HttpReply) -> Challenge | None:
        header = reply.headers.get("www-authenticate")
        if header and header.lower().startswith("digest"):
            return Challenge.from_header(header)
        return None

    async def _get_json(self, target: str, *, lean: bool = False) -> Any:
        async with self._poll_lock if lean else self._lock:
            reply = await self._send("GET", target, lean=lean)
        if reply.status != 200:
            text = reply.body[:60].decode("utf-8", "replace").strip()
            raise InvalidResponse(f"plug {self.mac}: {target} answered HTTP {reply.status} {text!r}")
        return parse.parse_json(reply.body, f"plug {self.mac} {target.split('?')[0]}")

    async def rpc(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call a Gen2+ RPC method and return its bare result; errors become ``RpcCallError``."""
        return await self._rpc(method, params)

    async def _rpc(self, method: str, params: Mapping[str, Any] | None, *, lean: bool = False) -> Any:
        if self.gen < 2:
            raise DeviceError(f"plug {self.mac} is Gen1 and has no RPC API")
        if self.rpc_mode == "frame":
            return await self._rpc_frame(method, params or {})
        target = f"/rpc/{method}"
        if params:
            target += "?" + _qs(params)
        async with self._poll_lock if lean else self._lock:
            reply = await self._send("GET", target, lean=lean)
        what = f"plug {self.mac} {method}"
        if reply.status == 200:
            value = parse.parse_json(reply.body, what)
            if isinstance(value, dict) and set(value) == {"code", "message"}:
                err = parse.rpc_error(value)
                if err is not None:
                    raise err
            return value
        try:
            value = parse.parse_json(reply.body, what)
        except InvalidResponse:
            value = None
        err = parse.rpc_error(value)
        if err is not None:
            raise err
        raise InvalidResponse(f"{what}: HTTP {reply.status} without an RPC error body")

    async def _rpc_frame(self, method: str, params: Mapping[str, Any]) -> Any:
        """``POST /rpc`` with a JSON-RPC frame; digest credentials travel in the frame's ``auth``."""
        what = f"plug {self.mac} {method}"
        challenges = 0
        async with self._lock:
            while True:
                self._frame_id += 1
                frame: dict[str, Any] = {"id": self._frame_id, "src": self._src, "method": method}
                if params:
                    frame["params"] = dict(params)
                sent_auth = False
                if self._digest is not None and self._digest.challenge is not None:
                    frame["auth"] = self._digest.json_auth()
                    sent_auth = True
                reply = await _exchange(
                    self._http,
                    self.host,
                    self.port,
                    "POST",
                    "/rpc",
                    timeout_s=self.timeout_s,
                    headers={"Content-Type": "application/json"},
                    body=json.dumps(frame).encode(),
                    max_bytes=self.max_response_bytes,
                )
                if reply.status == 429:
                    if self._digest is not None:
                        self._digest.forget()
                    raise DeviceBusyError(f"{what}: device answered 429")
                value = parse.parse_json(reply.body, f"{what} (HTTP {reply.status})")
                err = parse.rpc_error(value)
                if err is not None and err.code == 401:
                    if self._digest is None:
                        raise DeviceAuthError(f"plug {self.mac} at {self.where} requires a password")
                    challenge = parse_json_challenge(err.rpc_message)  # a JSON string inside JSON
                    if sent_auth and not challenge.stale:
                        raise DeviceAuthError(
                            f"plug {self.mac} at {self.where} rejected the password for admin"
                        )
                    challenges += 1
                    if challenges > 3:
                        raise DeviceAuthError(f"plug {self.mac} at {self.where} keeps re-challenging")
                    self._digest.adopt(challenge)
                    continue
                if err is not None:
                    raise err
                if not isinstance(value, dict) or "result" not in value:
                    raise InvalidResponse(f"{what}: frame without 'result' (HTTP {reply.status})")
                return value["result"]

    # ---- domain calls --------------------------------------------------------------------------

    async def identify(self) -> parse.DeviceInfo:
        """Re-read ``/shelly`` and check the MAC is still ours (call before switching)."""
        async with self._lock:
            info = await fetch_info(
                self.host,
                self.port,
                timeout_s=self.timeout_s,
                http=self._http,
                max_response_bytes=self.max_response_bytes,
            )
        if info.mac != self.mac:
            raise DeviceMismatchError(f"{self.where} is now plug {info.mac}, not {self.mac}")
        return info

    async def read(self) -> Reading:
        """One normalised reading (power W, energy mWh, relay, V, A, °C, error flags, uptime)."""
        return await self._read(lean=True)

    async def _read(self, *, lean: bool) -> Reading:
        """``lean``: in the poll's lane; else in the command lane (a switch's read-back, which must not
        wait behind a poll the plug is slow to answer)."""
        if self.gen == 1:
            status = await self._get_json("/status", lean=lean)
            return parse.gen1_reading(status, mac=self.mac, ts_ms=int(self.clock.now() * 1000))
        status = await self._rpc("Shelly.GetStatus", None, lean=lean)
        return parse.gen2_reading(status, mac=self.mac, ts_ms=int(self.clock.now() * 1000))

    async def relay_state(self) -> parse.RelayState:
        """The relay's output and armed flip-back timer."""
        self._require_switch()
        if self.gen == 1:
            return parse.gen1_relay_state(await self._get_json("/relay/0"))
        return parse.gen2_switch_state(await self.rpc("Switch.GetStatus", {"id": 0}))

    def _require_switch(self) -> None:
        if not self.switchable:
            raise DeviceError(f"plug {self.mac} ({self.model}) is metering-only and cannot switch")

    async def set_relay(self, on: bool, auto_off_s: int | None = None) -> bool:
        """Switch the relay, arming the device's flip-back timer when ``auto_off_s`` is given.

        Checks the MAC first, reads the relay back afterwards and raises ``DeviceError`` if it does
        not match (e.g. an over-power trip). Returns the confirmed state (== ``on``).
        """
        self._require_switch()
        if auto_off_s is not None and auto_off_s <= 0:
            raise ValueError("auto_off_s must be positive")
        await self.identify()
        if self.gen == 1:
            target = f"/relay/0?turn={'on' if on else 'off'}"
            if auto_off_s is not None:
                target += f"&timer={int(auto_off_s)}"
            parse.gen1_relay_state(await self._get_json(target))
        else:
            params: dict[str, Any] = {"id": 0, "on": on}
            if auto_off_s is not None:
                params["toggle_after"] = int(auto_off_s)
            await self.rpc("Switch.Set", params)
        return await self._confirm(on)

    async def toggle(self) -> bool:
        """Flip the relay (MAC checked first); returns the new, read-back state."""
        self._require_switch()
        before = await self.relay_state()
        await self.identify()
        if self.gen == 1:
            await self._get_json("/relay/0?turn=toggle")
        else:
            await self.rpc("Switch.Toggle", {"id": 0})
        return await self._confirm(not before.on)

    async def _confirm(self, on: bool) -> bool:
        reading = await self._read(lean=False)
        if reading.relay_on != on:
            why = " (over-power protection tripped)" if reading.errors & 1 else ""
            state = "on" if reading.relay_on else "off"
            raise DeviceError(
                f"plug {self.mac}: relay is {state} after switching it {'on' if on else 'off'}{why}"
            )
        return reading.relay_on
