"""The message bus port: topics, subscriptions, publish, and streaming subscribe with ack/nack.

Semantics every adapter honours (they are Pub/Sub's): publishing to a topic that does not exist is a
:class:`~chargectl.common.errors.TransportError`; a message published before a subscription exists is
not delivered to it; each message is delivered at least once to every subscription on its topic; a
handler returning ``True`` acks it, ``False`` or an exception nacks it (redelivery, and after
``max_delivery_attempts`` the dead-letter topic when the subscription has one); a subscriber holds at
most ``max_messages`` unacked messages (flow control).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Bus", "BusMessage", "Handler", "SubscriptionHandle"]


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One delivered message: payload, attributes, the bus's id and which delivery this is (1-based)."""

    data: bytes = field(repr=False)
    attributes: Mapping[str, str]
    message_id: str
    delivery_attempt: int = 1
    publish_time_s: float = 0.0


Handler = Callable[[BusMessage], Awaitable[bool]]
"""Processes one message; ``True`` acks it, ``False`` (or raising) nacks it."""


@runtime_checkable
class SubscriptionHandle(Protocol):
    """A running subscriber."""

    @property
    def running(self) -> bool:
        """False once the subscriber stopped, by :meth:`stop` or because it failed."""
        ...

    @property
    def error(self) -> BaseException | None:
        """Why the subscriber failed (None while running or after a clean stop)."""
        ...

    async def stop(self) -> None:
        """Stop pulling; messages in flight are nacked or finish; idempotent."""
        ...


@runtime_checkable
class Bus(Protocol):
    """Publish/subscribe over named topics and subscriptions."""

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` unless it exists."""
        ...

    async def ensure_subscription(
        self,
        subscription: str,
        topic: str,
        *,
        ack_deadline_s: int = 60,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> None:
        """Create ``subscription`` on ``topic`` (with an optional dead-letter policy) unless it exists."""
        ...

    async def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish one message; returns the bus's message id; ``TransportError`` if it was not accepted."""
        ...

    async def subscribe(
        self, subscription: str, handler: Handler, *, max_messages: int = 100, max_bytes: int = 100 << 20
    ) -> SubscriptionHandle:
        """Start a streaming pull on ``subscription`` calling ``handler`` per message."""
        ...

    async def close(self) -> None:
        """Stop every subscriber and release connections."""
        ...
