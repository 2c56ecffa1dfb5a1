"""The bus contract, run against the in-memory adapter and against the Pub/Sub emulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from chargectl.common.errors import TransportError
from chargectl.services.adapters.bus import Bus, BusMessage
from chargectl.services.adapters.memory_bus import MemoryBus


@pytest.fixture(params=["memory", pytest.param("pubsub", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        b: Bus = MemoryBus()
    else:
        request.getfixturevalue("pubsub_env")
        from chargectl.services.adapters.pubsub_bus import PubSubBus

        b = PubSubBus(f"bus-{uuid.uuid4().hex[:8]}", publish_timeout_s=10)
    try:
        yield b
    finally:
        await b.close()


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``cond`` (an upper bound only; the assertion is the condition, not the time)."""
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_satisfies_the_protocol(bus: Bus) -> None:
    assert isinstance(bus, Bus)


async def test_publish_to_missing_topic_is_a_transport_error(bus: Bus) -> None:
    with pytest.raises(TransportError, match="publish to"):
        await bus.publish(name("missing"), b"x")


async def test_publish_and_receive_with_attributes_then_ack(bus: Bus) -> None:
    topic, sub = name("t"), name("s")
    await bus.ensure_topic(topic)
    await bus.ensure_topic(topic)  # idempotent
    await bus.ensure_subscription(sub, topic)
    await bus.ensure_subscription(sub, topic)
    got: list[BusMessage] = []

    async def handler(msg: BusMessage) -> bool:
        got.append(msg)
        return True

    ids = [await bus.publish(topic, bytes([i]) * 10, {"site_id": "s1", "n": str(i)}) for i in range(3)]
    assert len(set(ids)) == 3
    handle = await bus.subscribe(sub, handler)
    await wait_until(lambda: len(got) >= 3)
    assert handle.running
    by_n = {m.attributes["n"]: m for m in got}
    assert sorted(by_n) == ["0", "1", "2"]
    assert by_n["2"].data == b"\x02" * 10
    assert by_n["1"].attributes["site_id"] == "s1"
    assert {m.message_id for m in got} == set(ids)
    await handle.stop()
    assert not handle.running
    assert handle.error is None
    assert len(got) == 3  # acked: never redelivered


async def test_message_published_before_subscription_is_not_delivered(bus: Bus) -> None:
    topic, sub = name("t"), name("s")
    await bus.ensure_topic(topic)
    await bus.publish(topic, b"early")
    await bus.ensure_subscription(sub, topic)
    await bus.publish(topic, b"late")
    got: list[bytes] = []

    async def handler(msg: BusMessage) -> bool:
        got.append(msg.data)
        return True

    handle = await bus.subscribe(sub, handler)
    await wait_until(lambda: b"late" in got)
    await handle.stop()
    assert got == [b"late"]


async def test_nack_and_exception_redeliver(bus: Bus) -> None:
    topic, sub = name("t"), name("s")
    await bus.ensure_topic(topic)
    await bus.ensure_subscription(sub, topic, ack_deadline_s=10)
    seen: list[bytes] = []

    async def handler(msg: BusMessage) -> bool:
        seen.append(msg.data)
        n = seen.count(msg.data)
        if msg.data == b"nack" and n == 1:
            return False
        if msg.data == b"boom" and n == 1:
            raise RuntimeError("handler bug")
        return True

    handle = await bus.subscribe(sub, handler)
    await bus.publish(topic, b"nack")
    await bus.publish(topic, b"boom")
    await wait_until(lambda: seen.count(b"nack") == 2 and seen.count(b"boom") == 2)
    await handle.stop()
    assert sorted(seen) == [b"boom", b"boom", b"nack", b"nack"]


async def test_flow_control_bounds_messages_in_flight(bus: Bus) -> None:
    topic, sub = name("t"), name("s")
    await bus.ensure_topic(topic)
    await bus.ensure_subscription(sub, topic)
    in_flight = 0
    peak = 0
    done: list[bytes] = []

    async def handler(msg: BusMessage) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        done.append(msg.data)
        return True

    for i in range(8):
        await bus.publish(topic, str(i).encode())
    handle = await bus.subscribe(sub, handler, max_messages=2)
    await wait_until(lambda: len(set(done)) == 8)
    await handle.stop()
    assert 1 <= peak <= 2


async def test_dead_letter_after_max_delivery_attempts(bus: Bus) -> None:
    topic, sub, dlq, dlq_sub = name("t"), name("s"), name("dead"), name("dead-s")
    await bus.ensure_topic(topic)
    await bus.ensure_topic(dlq)
    await bus.ensure_subscription(dlq_sub, dlq)
    await bus.ensure_subscription(
        sub, topic, ack_deadline_s=10, dead_letter_topic=dlq, max_delivery_attempts=5
    )
    attempts: list[int] = []
    dead: list[BusMessage] = []

    async def refuse(msg: BusMessage) -> bool:
        attempts.append(msg.delivery_attempt)
        return False

    async def collect(msg: BusMessage) -> bool:
        dead.append(msg)
        return True

    h1 = await bus.subscribe(sub, refuse)
    h2 = await bus.subscribe(dlq_sub, collect)
    await bus.publish(topic, b"poison", {"site_id": "x"})
    await wait_until(lambda: len(dead) == 1, timeout_s=60)
    await h1.stop()
    await h2.stop()
    assert attempts[:5] == [1, 2, 3, 4, 5]
    assert dead[0].data == b"poison"
    assert dead[0].attributes["site_id"] == "x"
    assert dead[0].attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


async def test_subscribe_to_missing_subscription_fails(bus: Bus) -> None:
    async def handler(msg: BusMessage) -> bool:
        return True

    try:
        handle = await bus.subscribe(name("nosub"), handler)
    except TransportError:
        return
    # Pub/Sub's streaming pull reports a missing subscription asynchronously.
    await wait_until(lambda: not handle.running)
    assert isinstance(handle.error, TransportError)
    await handle.stop()


async def test_memory_bus_offline_publish_fails() -> None:
    bus = MemoryBus()
    await bus.ensure_topic("t")
    bus.set_offline(True)
    with pytest.raises(TransportError, match="offline"):
        await bus.publish("t", b"x")
    bus.set_offline(False)
    assert await bus.publish("t", b"x")
