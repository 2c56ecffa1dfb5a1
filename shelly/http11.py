"""A lean HTTP/1.1 client for the agent's hot poll: one plug, one (kept-alive when allowed) connection.

httpx costs about a millisecond of CPU per request (URL model, connection pool, anyio, h11 events);
the agent polls every plug every few seconds, so the poll's ``GET`` of the status document goes
through this instead: an :class:`asyncio.Protocol` that writes one request and parses one answer
straight from the socket buffer. Everything else (the CLI, commands, discovery) stays on httpx.

Bounds are the same as the httpx path: the decoded body is abandoned past ``max_bytes`` (declared or
actual), the header block past :data:`MAX_HEAD_BYTES`, the whole exchange past ``timeout_s``.
Framing: ``Content-Length``, ``Transfer-Encoding: chunked`` or read-until-close. A connection is kept
for the next request only when the answer was complete and nobody said ``Connection: close`` (Gen2+
plugs always do; the cost is then one connect per poll, as with httpx). A kept connection that turns
out dead before any byte of the answer is retried once on a fresh one (``GET`` only: idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from chargectl.common.errors import (
    DeviceError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    InvalidResponse,
)

__all__ = ["MAX_HEAD_BYTES", "HttpReply", "PollConnection"]

MAX_HEAD_BYTES = 16 * 1024  # status line + headers; a plug sends a few hundred bytes
_MAX_CHUNK_LINE = 1024


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[
        str, str
    ]  # lower-case names; the first of repeated headers (a Digest challenge preferred)
    body: bytes


class _Dropped(Exception):
    """The connection ended before the answer was complete (``started``: some of it had arrived)."""

    def __init__(self, started: bool, why: str) -> None:
        super().__init__(why)
        self.started = started


class _Answer(asyncio.Protocol):
    """Parses one HTTP/1.1 answer at a time off one connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[HttpReply] | None = None
        self._max_bytes = 0
        self._where = ""
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._mode = ""  # "" = reading the head; then "length", "chunked" or "close"
        self._left = 0  # bytes left of the body (length) or of the current chunk (chunked)
        self._trailers = False
        self._body = bytearray()
        self._keep = True
        self._started = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for (an idle kept connection): the stream is out of step; drop it.
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        self._started = True
        self._buf += data
        try:
            self._advance()
        except InvalidResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._mode == "close":
                self._finish(keep=False)
            else:
                self._fail(_Dropped(self._started, "closed the connection mid-answer"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if exc is None and self._mode == "close":
                self._finish(keep=False)
            else:
                why = f"dropped the connection ({type(exc).__name__})" if exc else "closed the connection"
                self._fail(_Dropped(self._started, why))

    # ---- one exchange ----------------------------------------------------------------------------

    def expect(self, where: str, max_bytes: int) -> asyncio.Future[HttpReply]:
        self._reset()
        self._buf.clear()
        self._where = where
        self._max_bytes = max_bytes
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, *, keep: bool) -> None:
        if not (keep and self._keep) or self._buf:
            self.closed = True  # extra bytes after the answer: never reuse this stream
        assert self._waiter is not None
        self._waiter.set_result(HttpReply(self._status, self._headers, bytes(self._body)))

    def _add_body(self, data: bytes | bytearray) -> None:
        if len(self._body) + len(data) > self._max_bytes:
            raise InvalidResponse(f"{self._where} sent more than {self._max_bytes} bytes; stopped reading")
        self._body += data

    def _advance(self) -> None:
        buf = self._buf
        while True:
            if not self._mode:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise InvalidResponse(
                            f"{self._where} sent a header block over {MAX_HEAD_BYTES} bytes"
                        )
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._head(head):
                    continue  # an interim 1xx answer: the real one follows
            if self._mode == "length":
                take = min(self._left, len(buf))
                self._add_body(buf[:take])
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._finish(keep=True)
                return
            if self._mode == "close":
                self._add_body(buf)
                buf.clear()
                return
            # chunked
            if self._trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise InvalidResponse(f"{self._where} sent an endless chunked trailer")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._finish(keep=True)
                    return
                continue
            if self._left > 0:
                take = min(self._left, len(buf))
                self._add_body(buf[:take])
                del buf[:take]
                self._left -= take
                if self._left > 0:
                    return
                self._left = -1  # the CRLF after the chunk's data
            if self._left < 0:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise InvalidResponse(f"{self._where} sent a malformed chunk")
                del buf[:2]
                self._left = 0
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > _MAX_CHUNK_LINE:
                    raise InvalidResponse(f"{self._where} sent a malformed chunk size")
                return
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            del buf[: end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise InvalidResponse(
                    f"{self._where} sent a malformed chunk size {size_text[:20]!r}"
                ) from None
            if size < 0:
                raise InvalidResponse(f"{self._where} sent a malformed chunk size {size_text[:20]!r}")
            if len(self._body) + size > self._max_bytes:
                raise InvalidResponse(
                    f"{self._where} sent more than {self._max_bytes} bytes; stopped reading"
                )
            if size == 0:
                self._trailers = True
            else:
                self._left = size

    def _head(self, head: bytes) -> bool:
        """Parse the status line and headers; False for an interim 1xx answer to skip."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if (
            len(parts) < 2
            or not parts[0].startswith("HTTP/1.")
            or not parts[1].isdigit()
            or len(parts[1]) != 3
        ):
            raise InvalidResponse(f"{self._where} did not answer HTTP ({lines[0][:40]!r})")
        status = int(parts[1])
        if 100 <= status < 200:
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise InvalidResponse(f"{self._where} sent a malformed header line {line[:40]!r}")
            key = name.strip().lower()
            text = value.strip()
            if key not in headers or (key == "www-authenticate" and text.lower().startswith("digest")):
                headers[key] = text
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep = parts[0] == "HTTP/1.1" and "close" not in connection
        if parts[0] == "HTTP/1.0" and "keep-alive" in connection:
            self._keep = True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            declared = headers["content-length"]
            if not declared.isdigit():
                raise InvalidResponse(f"{self._where} sent a malformed Content-Length {declared[:20]!r}")
            if int(declared) > self._max_bytes:
                raise InvalidResponse(
                    f"{self._where} announced a {int(declared)}-byte answer (limit {self._max_bytes} bytes)"
                )
            self._mode = "length"
            self._left = int(declared)
        elif status in (204, 304):
            self._mode = "length"
            self._left = 0
        else:
            self._mode = "close"
            self._keep = False
        return True


class PollConnection:
    """``GET`` against one device over one connection, reopened when the device closes it."""

    def __init__(self, host: str, port: int, *, user_agent: str = "chargectl") -> None:
        self.host = host
        self.port = port
        self.user_agent = user_agent
        self.connects = 0  # how many connections were opened (tests and the bench look)
        self._conn: _Answer | None = None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def move(self, host: str, port: int) -> None:
        if (host, port) != (self.host, self.port):
            self.close()
            self.host, self.port = host, port

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    async def get(
        self,
        target: str,
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
        max_bytes: int,
    ) -> HttpReply:
        """One ``GET``; errors are ``DeviceError`` subclasses (timeout, unreachable, invalid)."""
        path = target.split("?")[0]
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        head = f"GET {target} HTTP/1.1\r\nHost: {host}:{self.port}\r\nUser-Agent: {self.user_agent}\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (head + "\r\n").encode("latin-1")
        try:
            async with asyncio.timeout(timeout_s):
                for attempt in (1, 2):
                    reused = self._conn is not None and not self._conn.closed
                    try:
                        return await self._once(request, max_bytes, reused)
                    except _Dropped as exc:
                        if reused and not exc.started and attempt == 1:
                            continue  # the device had dropped our idle connection: reconnect once
                        raise DeviceUnreachableError(f"{self.where} {exc}") from None
        except TimeoutError:
            self.close()
            raise DeviceTimeoutError(f"{self.where} did not answer {path} within {timeout_s:g} s") from None
        except DeviceError:
            self.close()
            raise
        except BaseException:
            self.close()  # cancelled mid-answer: the stream is out of step
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, request: bytes, max_bytes: int, reused: bool) -> HttpReply:
        conn = self._conn if reused else None
        if conn is None:
            self.close()
            conn = await self._open()
        waiter = conn.expect(self.where, max_bytes)
        assert conn.transport is not None
        conn.transport.write(request)
        reply = await waiter
        if conn.closed:
            self.close()
        return reply

    async def _open(self) -> _Answer:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Answer, self.host, self.port)
        except OSError as exc:
            from chargectl.shelly.client import connect_failure  # (client imports this module)

            raise DeviceUnreachableError(f"{self.where} {connect_failure(exc)}") from None
        except UnicodeError:
            raise DeviceUnreachableError(f"{self.where} is not a valid address") from None
        self.connects += 1
        self._conn = conn
        return conn
