"""The agent's lean poll client (shelly/http11.py) over real loopback HTTP.

A scripted HTTP server here plays the framings the simulator never sends (keep-alive, chunked,
read-until-close, an idle connection dropped by the device) and hostile answers (garbage, endless
headers, oversize, a body cut short); the simulator then drives the same path through ShellyClient.read
with digest and basic auth and checks the reading's energy and relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from shelly_support import FleetFactory

from chargectl.common.clock import ManualClock
from chargectl.common.errors import (
    DeviceAuthError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    InvalidResponse,
)
from chargectl.shelly import ShellyClient
from chargectl.shelly.http11 import PollConnection
from chargectl.shelly.simdevice import make_profile

pytestmark = pytest.mark.integration

Answer = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # writes one answer; True = keep the connection


@dataclass
class Scripted:
    """A loopback HTTP server that answers request N with ``answers[N]`` (the last one repeats)."""

    answers: list[Answer]
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                if not await answer(writer):
                    return
        finally:
            writer.close()


Start = Callable[[list[Answer]], Awaitable[Scripted]]


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    servers: list[Scripted] = []

    async def start(answers: list[Answer]) -> Scripted:
        s = Scripted(answers)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        s.port = s.server.sockets[0].getsockname()[1]
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.server.wait_closed(), 10)


def sized(body: bytes, *, status: str = "200 OK", close: bool = False, extra: str = "") -> Answer:
    async def write(w: asyncio.StreamWriter) -> bool:
        conn = "Connection: close\r\n" if close else ""
        w.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{conn}{extra}\r\n".encode() + body)
        await w.drain()
        return not close

    return write


def chunked(pieces: list[bytes], *, dribble: bool = True) -> Answer:
    """``Transfer-Encoding: chunked`` with a chunk extension and a trailer, written a few bytes at a time."""

    async def write(w: asyncio.StreamWriter) -> bool:
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for piece in pieces:
            wire += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
        wire += b"0\r\nX-Trailer: yes\r\n\r\n"
        step = 7 if dribble else len(wire)
        for i in range(0, len(wire), step):
            w.write(wire[i : i + step])
            await w.drain()
        return True

    return write


def raw(data: bytes, *, keep: bool = False) -> Answer:
    async def write(w: asyncio.StreamWriter) -> bool:
        w.write(data)
        await w.drain()
        return keep

    return write


def never() -> Answer:
    async def write(w: asyncio.StreamWriter) -> bool:
        await asyncio.Event().wait()
        return False

    return write


STATUS = b'{"relays":[{"ison":true}],"meters":[{"power":1500.0,"total":15000}]}'


async def test_keep_alive_serves_many_polls_on_one_connection(scripted: Start) -> None:
    server = await scripted([sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            reply = await poll.get("/status", timeout_s=10, max_bytes=4096)
            assert (reply.status, reply.body) == (200, STATUS)
        assert poll.connects == server.connections == 1
        assert len(server.requests) == 3
        assert server.requests[0].startswith(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1:")
    finally:
        poll.close()


async def test_chunked_answer_is_reassembled_and_bounded(scripted: Start) -> None:
    big = [b"x" * 3000, b"y" * 3000]  # 6000 decoded bytes
    server = await scripted([chunked([STATUS[:10], STATUS[10:]]), chunked(big), sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        reply = await poll.get("/status", timeout_s=10, max_bytes=4096)
        assert reply.body == STATUS
        with pytest.raises(InvalidResponse, match="more than 4096 bytes"):
            await poll.get("/status", timeout_s=10, max_bytes=4096)
        # The oversize answer was abandoned with its connection; the next poll opens a fresh one.
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        assert poll.connects == 2
    finally:
        poll.close()


async def test_malformed_chunk_size_is_an_invalid_response(scripted: Start) -> None:
    server = await scripted(
        [raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")]
    )
    poll = PollConnection("127.0.0.1", server.port)
    with pytest.raises(InvalidResponse, match="malformed chunk size"):
        await poll.get("/status", timeout_s=10, max_bytes=4096)


async def test_connection_close_and_read_until_close(scripted: Start) -> None:
    until_close = raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + STATUS)
    server = await scripted([until_close, sized(STATUS, close=True), sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        assert poll.connects == server.connections == 3  # the device said close twice: three connects
    finally:
        poll.close()


async def test_idle_connection_dropped_by_the_device_is_reopened_once(scripted: Start) -> None:
    async def answer_then_drop(w: asyncio.StreamWriter) -> bool:
        # Says keep-alive, then hangs up before the next request (a plug rebooting or a full table).
        await sized(STATUS)(w)
        w.transport.abort()
        return False

    server = await scripted([answer_then_drop])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        for _ in range(3):
            assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        assert len(server.requests) == 3  # every poll answered exactly once, none lost, none doubled
    finally:
        poll.close()


async def test_answer_cut_short_is_unreachable_and_not_repeated(scripted: Start) -> None:
    server = await scripted([raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + STATUS[:10])])
    poll = PollConnection("127.0.0.1", server.port)
    with pytest.raises(DeviceUnreachableError, match="closed the connection mid-answer"):
        await poll.get("/status", timeout_s=10, max_bytes=4096)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "did not answer HTTP"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "did not answer HTTP"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n{}", "announced a 1000000000-byte answer"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 20000, "header block over"),
    ],
)
async def test_garbage_answers_are_invalid_responses(scripted: Start, wire: bytes, match: str) -> None:
    server = await scripted([raw(wire, keep=True)])
    poll = PollConnection("127.0.0.1", server.port)
    with pytest.raises(InvalidResponse, match=match):
        await poll.get("/status", timeout_s=10, max_bytes=4096)


async def test_silence_times_out_and_the_next_poll_starts_clean(scripted: Start) -> None:
    server = await scripted([never(), sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        with pytest.raises(DeviceTimeoutError, match=r"did not answer /status within 0\.3 s"):
            await poll.get("/status?x=1", timeout_s=0.3, max_bytes=4096)
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        assert poll.connects == 2
    finally:
        poll.close()


async def test_nothing_listening_is_unreachable() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago and has nobody behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeviceUnreachableError, match="refused the connection"):
        await PollConnection("127.0.0.1", port).get("/status", timeout_s=10, max_bytes=4096)


async def test_interim_100_continue_is_skipped(scripted: Start) -> None:
    body = STATUS
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    server = await scripted([raw(wire, keep=True)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == body
    finally:
        poll.close()


# --- through ShellyClient.read against the simulator --------------------------------------------------


@pytest.mark.parametrize("gen", [1, 2])
async def test_authenticated_poll_goes_the_lean_way_and_reads_the_truth(
    gen: int, fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    mac = f"A1B2C30000F{gen}"
    fleet = await fleet_factory([make_profile(gen, mac, password="s3cret")])
    plug = fleet.plugs[0]
    async with await ShellyClient.connect(
        plug.host, plug.port, password="s3cret", clock=manual_clock
    ) as client:
        plug.device.set_load(watts=1200)
        assert await client.set_relay(True) is True
        poll = client._poll
        assert poll is not None
        before = poll.connects
        manual_clock.advance(300)
        r = await client.read()
        # 1200 W for 5 min = 100 Wh = 100000 mWh (Gen1 counts 6000 Wmin), relay on as switched.
        assert (r.mac, r.relay_on, r.power_w, r.energy_mwh) == (mac, True, 1200.0, 100_000)
        assert r.energy_mwh == plug.truth().energy_mwh
        assert poll.connects > before  # the poll used the lean connection, not httpx
        auth = [e.authorization for e in plug.log if e.path in ("/status", "/rpc/Shelly.GetStatus")]
        assert auth and auth[-1] is not None and auth[-1].startswith("Basic" if gen == 1 else "Digest")
    with pytest.raises(DeviceAuthError):  # Gen2+ is refused at connect (its status read), Gen1 at the poll
        async with await ShellyClient.connect(
            plug.host, plug.port, password="wrong", clock=manual_clock
        ) as bad:
            await bad.read()


async def test_gen1_password_never_goes_to_an_impostor_on_the_poll_path(
    fleet_factory: FleetFactory, manual_clock: ManualClock
) -> None:
    from chargectl.common.errors import DeviceMismatchError

    fleet = await fleet_factory([make_profile(1, "A1B2C30000E1", password="s3cret")])
    plug = fleet.plugs[0]
    async with await ShellyClient.connect(
        plug.host, plug.port, password="s3cret", clock=manual_clock
    ) as client:
        await plug.inject("wrong_mac", count=1)  # /shelly now names another plug
        sent = len([e for e in plug.log if e.authorization])
        with pytest.raises(DeviceMismatchError, match="not sending it the password"):
            await client.read()
        assert len([e for e in plug.log if e.authorization]) == sent  # no credentials left the agent
        assert (await client.read()).mac == "A1B2C30000E1"


async def test_a_late_answer_is_never_taken_for_the_next_polls_energy(scripted: Start) -> None:
    """A kept-alive device answers a timed-out poll late: that stale counter must not become the next
    poll's reading (it would bill the wrong energy); the next poll gets its own, fresh answer."""
    stale = b'{"meters":[{"total":1}]}'
    fresh = b'{"meters":[{"total":2}]}'

    written = asyncio.Event()

    async def late(w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.6)  # the device's own slowness, past the poll's 0.2 s timeout
        try:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(stale), stale))
            return True
        finally:
            written.set()

    server = await scripted([late, sized(fresh)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        with pytest.raises(DeviceTimeoutError):
            await poll.get("/status", timeout_s=0.2, max_bytes=4096)
        await asyncio.wait_for(written.wait(), 30)  # the late answer went to the connection we dropped
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == fresh
        assert poll.connects == 2
    finally:
        poll.close()


async def test_unsolicited_bytes_on_an_idle_connection_are_not_an_answer(scripted: Start) -> None:
    async def answer_then_chatter(w: asyncio.StreamWriter) -> bool:
        await sized(STATUS)(w)
        w.write(b'HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{"meters":[{"total":9}]}')
        await w.drain()
        return True

    server = await scripted([answer_then_chatter, sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        for _ in range(2):
            assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
    finally:
        poll.close()


def drip(total: int, every_s: float) -> Answer:
    """A valid head, then a body of ``total`` bytes one byte per ``every_s`` (a slowloris plug)."""

    async def write(w: asyncio.StreamWriter) -> bool:
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n{{".encode())
        await w.drain()
        for _ in range(total - 1):
            await asyncio.sleep(every_s)
            w.write(b" ")
            await w.drain()
        return False

    return write


async def test_a_plug_that_drips_its_answer_is_cut_off_at_the_timeout_not_per_byte(scripted: Start) -> None:
    # Each byte comes long before any per-read timeout would fire; the whole answer would take 200 s.
    server = await scripted([drip(4000, 0.05), sized(STATUS)])
    poll = PollConnection("127.0.0.1", server.port)
    try:
        with pytest.raises(DeviceTimeoutError, match=r"within 0\.5 s"):
            await asyncio.wait_for(poll.get("/status", timeout_s=0.5, max_bytes=8192), 60)
        # The dripping connection is dropped: the next poll gets a clean one and a whole answer.
        assert (await poll.get("/status", timeout_s=10, max_bytes=4096)).body == STATUS
        assert poll.connects == 2
    finally:
        poll.close()
