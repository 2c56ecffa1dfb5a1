"""The in-process bus (all-in-one ``chargectl run`` and tests): Pub/Sub semantics on asyncio queues.

Everything runs on the event loop that uses it. ``set_offline(True)`` makes every publish fail with
``TransportError`` (the fault a link outage produces), which is how tests exercise the agent's spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from chargectl.common.errors import TransportError
from chargectl.services.adapters.bus import BusMessage, Handler

__all__ = ["MemoryBus"]

log = logging.getLogger("chargectl.bus.memory")


@dataclass
class _Subscription:
    name: str
    topic: str
    dead_letter_topic: str | None
    max_delivery_attempts: int
    queue: asyncio.Queue[BusMessage] = field(default_factory=asyncio.Queue)


class _Subscriber:
    def __init__(
        self, bus: MemoryBus, sub: _Subscription, handler: Handler, max_messages: int, max_bytes: int
    ) -> None:
        self._bus = bus
        self._sub = sub
        self._handler = handler
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._outstanding = 0
        self._outstanding_bytes = 0
        self._room = asyncio.Condition()
        self._inflight: dict[asyncio.Task[None], BusMessage] = {}
        self._task = asyncio.create_task(self._pull(), name=f"memory-bus-{sub.name}")
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped and not self._task.done()

    @property
    def error(self) -> BaseException | None:
        if self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    async def _pull(self) -> None:
        while True:
            async with self._room:
                await self._room.wait_for(lambda: self._outstanding < self._max_messages)
            msg = await self._sub.queue.get()
            size = len(msg.data)
            async with self._room:
                await self._room.wait_for(functools.partial(self._fits, size))
                self._outstanding += 1
                self._outstanding_bytes += len(msg.data)
            task = asyncio.create_task(self._deliver(msg))
            self._inflight[task] = msg

    def _fits(self, size: int) -> bool:
        # One message always fits, however large (Pub/Sub does the same).
        return self._outstanding == 0 or self._outstanding_bytes + size <= self._max_bytes

    async def _deliver(self, msg: BusMessage) -> None:
        ok = False
        try:
            ok = await self._handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler for %s failed on message %s; nacking", self._sub.name, msg.message_id)
        finally:
            self._inflight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            async with self._room:
                self._outstanding -= 1
                self._outstanding_bytes -= len(msg.data)
                self._room.notify_all()
        if not ok:
            await self._bus._nack(self._sub, msg)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        pending = dict(self._inflight)
        for task in pending:
            task.cancel()
        for task, msg in pending.items():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # Not acked: it goes back for the next subscriber, as an expired lease would.
            self._sub.queue.put_nowait(msg)


class MemoryBus:
    """In-process topics and subscriptions with at-least-once delivery, nack redelivery and dead letters."""

    def __init__(self) -> None:
        self._topics: dict[str, list[str]] = {}
        self._subs: dict[str, _Subscription] = {}
        self._subscribers: list[_Subscriber] = []
        self._ids = itertools.count(1)
        self._offline = False
        self.published = 0

    def set_offline(self, offline: bool) -> None:
        """Fault injection: while offline, every publish raises ``TransportError``."""
        self._offline = offline

    async def ensure_topic(self, topic: str) -> None:
        self._topics.setdefault(topic, [])

    async def ensure_subscription(
        self,
        subscription: str,
        topic: str,
        *,
        ack_deadline_s: int = 60,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> None:
        if topic not in self._topics:
            raise TransportError(f"topic {topic!r} does not exist")
        if subscription in self._subs:
            return
        if dead_letter_topic is not None and dead_letter_topic not in self._topics:
            raise TransportError(f"dead-letter topic {dead_letter_topic!r} does not exist")
        if not 5 <= max_delivery_attempts <= 100:
            raise TransportError("max_delivery_attempts must be between 5 and 100")
        self._subs[subscription] = _Subscription(
            subscription, topic, dead_letter_topic, max_delivery_attempts
        )
        self._topics[topic].append(subscription)

    async def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        if self._offline:
            raise TransportError(f"publish to {topic!r} failed: bus is offline")
        if topic not in self._topics:
            raise TransportError(f"publish to {topic!r} failed: topic does not exist")
        message_id = str(next(self._ids))
        now = time.time()
        for name in self._topics[topic]:
            self._subs[name].queue.put_nowait(
                BusMessage(bytes(data), dict(attributes or {}), message_id, 1, now)
            )
        self.published += 1
        return message_id

    async def _nack(self, sub: _Subscription, msg: BusMessage) -> None:
        attempts = msg.delivery_attempt
        if sub.dead_letter_topic is not None and attempts >= sub.max_delivery_attempts:
            attrs = dict(msg.attributes)
            attrs["CloudPubSubDeadLetterSourceDeliveryCount"] = str(attempts)
            attrs["CloudPubSubDeadLetterSourceSubscription"] = sub.name
            with contextlib.suppress(TransportError):
                await self.publish(sub.dead_letter_topic, msg.data, attrs)
            return
        sub.queue.put_nowait(
            BusMessage(msg.data, msg.attributes, msg.message_id, attempts + 1, msg.publish_time_s)
        )

    async def subscribe(
        self, subscription: str, handler: Handler, *, max_messages: int = 100, max_bytes: int = 100 << 20
    ) -> _Subscriber:
        sub = self._subs.get(subscription)
        if sub is None:
            raise TransportError(f"subscription {subscription!r} does not exist")
        if max_messages < 1 or max_bytes < 1:
            raise TransportError("flow control limits must be positive")
        subscriber = _Subscriber(self, sub, handler, max_messages, max_bytes)
        self._subscribers.append(subscriber)
        return subscriber

    def backlog(self, subscription: str) -> int:
        """Messages waiting (not yet handed to a subscriber) on ``subscription``."""
        sub = self._subs.get(subscription)
        if sub is None:
            raise TransportError(f"subscription {subscription!r} does not exist")
        return sub.queue.qsize()

    async def close(self) -> None:
        for subscriber in self._subscribers:
            await subscriber.stop()
        self._subscribers.clear()
