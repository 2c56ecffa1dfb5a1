"""The Google Cloud Pub/Sub bus adapter (``PUBSUB_EMULATOR_HOST`` selects the emulator).

The SDK is imported lazily and every SDK failure becomes ``TransportError``. The publisher sends each
``publish`` promptly: callers build their own batches (one message per agent flush), so the client's
own 10 ms batching is neither relied on nor needed, and no ordering keys are used. Subscriptions use
streaming pull with flow control; the client's callback threads hand each message to the event loop
that subscribed and ack or nack it by the handler's answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from chargectl.common.errors import TransportError
from chargectl.services.adapters.bus import BusMessage, Handler

__all__ = ["PubSubBus"]

log = logging.getLogger("chargectl.bus.pubsub")
T = TypeVar("T")
MAX_CALLBACK_THREADS = 64  # per subscription: message handlers in flight at once (see subscribe)

# gRPC's default reconnect back-off grows to 120 s; a site link that comes back should be used soon.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


class _Subscriber:
    def __init__(self, future: Any, subscription: str) -> None:
        self._future = future
        self._subscription = subscription
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped and not self._future.done()

    @property
    def error(self) -> BaseException | None:
        if self._stopped or not self._future.done() or self._future.cancelled():
            return None
        exc = self._future.exception()
        if exc is None:
            return None
        return TransportError(f"subscriber on {self._subscription!r} failed: {_describe(exc)}")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._future.cancel()

        def wait() -> None:
            # A cancelled or failed stream is what stop() wants.
            with contextlib.suppress(BaseException):
                self._future.result(timeout=30)

        await asyncio.to_thread(wait)


class PubSubBus:
    """The bus on Google Cloud Pub/Sub (or its emulator) for one project."""

    def __init__(
        self, project: str, *, publish_timeout_s: float = 30.0, admin_timeout_s: float = 30.0
    ) -> None:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        self.project = project
        self.publish_timeout_s = publish_timeout_s
        self.admin_timeout_s = admin_timeout_s
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        batch = pubsub_v1.types.BatchSettings(max_messages=100, max_bytes=9_000_000, max_latency=0.001)
        try:
            if emulator:
                import grpc  # type: ignore[import-untyped]
                from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
                from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

                self._publisher = pubsub_v1.PublisherClient(
                    batch_settings=batch,
                    transport=PublisherGrpcTransport(
                        channel=grpc.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
                    ),
                )
                self._subscriber = pubsub_v1.SubscriberClient(
                    transport=SubscriberGrpcTransport(
                        channel=grpc.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
                    )
                )
            else:
                self._publisher = pubsub_v1.PublisherClient(batch_settings=batch)
                self._subscriber = pubsub_v1.SubscriberClient()
        except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
            raise TransportError(f"cannot create Pub/Sub clients: {_describe(exc)}") from exc
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    # ------------------------------------------------------------------ names

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"

    # ------------------------------------------------------------------ admin

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        from google.api_core import exceptions as gexc

        try:
            return await asyncio.to_thread(fn)
        except gexc.GoogleAPIError as exc:
            raise TransportError(f"{what} failed: {_describe(exc)}") from exc

    async def ensure_topic(self, topic: str) -> None:
        from google.api_core import exceptions as gexc

        path = self.topic_path(topic)

        def create() -> None:
            with contextlib.suppress(gexc.AlreadyExists):
                self._publisher.create_topic(name=path, timeout=self.admin_timeout_s)

        await self._call(f"creating topic {topic!r}", create)

    async def ensure_subscription(
        self,
        subscription: str,
        topic: str,
        *,
        ack_deadline_s: int = 60,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = 5,
    ) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        request: dict[str, Any] = {
            "name": self.subscription_path(subscription),
            "topic": self.topic_path(topic),
            "ack_deadline_seconds": ack_deadline_s,
        }
        if dead_letter_topic is not None:
            request["dead_letter_policy"] = pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=self.topic_path(dead_letter_topic),
                max_delivery_attempts=max_delivery_attempts,
            )

        def create() -> None:
            with contextlib.suppress(gexc.AlreadyExists):
                self._subscriber.create_subscription(request=request, timeout=self.admin_timeout_s)

        await self._call(f"creating subscription {subscription!r}", create)

    # ------------------------------------------------------------------ publish

    async def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry

        retry = gretry.Retry(
            predicate=gretry.if_exception_type(
                gexc.ServiceUnavailable,
                gexc.DeadlineExceeded,
                gexc.InternalServerError,
                gexc.Aborted,
                gexc.Unknown,
                gexc.ResourceExhausted,
            ),
            initial=0.1,
            maximum=2.0,
            multiplier=2.0,
            timeout=self.publish_timeout_s,
        )
        try:
            future = self._publisher.publish(
                self.topic_path(topic),
                data,
                retry=retry,
                timeout=self.publish_timeout_s,
                **dict(attributes or {}),
            )
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.publish_timeout_s + 5.0)
        except (gexc.GoogleAPIError, concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise TransportError(f"publish to {topic!r} failed: {_describe(exc)}") from exc
        except (ValueError, TypeError) as exc:  # oversize message, non-string attribute
            raise TransportError(f"publish to {topic!r} refused: {_describe(exc)}") from exc
        except RuntimeError as exc:  # publisher already stopped
            raise TransportError(f"publish to {topic!r} failed: {_describe(exc)}") from exc
        return str(result)

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self, subscription: str, handler: Handler, *, max_messages: int = 100, max_bytes: int = 100 << 20
    ) -> _Subscriber:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        if max_messages < 1 or max_bytes < 1:
            raise TransportError("flow control limits must be positive")
        loop = asyncio.get_running_loop()

        def callback(message: Any) -> None:
            msg = BusMessage(
                data=message.data,
                attributes=dict(message.attributes),
                message_id=message.message_id,
                delivery_attempt=message.delivery_attempt or 1,
                publish_time_s=message.publish_time.timestamp() if message.publish_time else 0.0,
            )

            async def handle() -> bool:
                return await handler(msg)

            ok = False
            try:
                ok = asyncio.run_coroutine_threadsafe(handle(), loop).result()
            except concurrent.futures.CancelledError:
                ok = False
            except Exception:
                log.exception("handler for %s failed on message %s; nacking", subscription, msg.message_id)
            if ok:
                message.ack()
            else:
                message.nack()

        flow = pubsub_v1.types.FlowControl(max_messages=max_messages, max_bytes=max_bytes)
        # A callback holds its thread until the handler is done on the loop: as many threads as the flow
        # control lets messages in (up to 64), or the client's default 10 would cap handlers in flight.
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(
            concurrent.futures.ThreadPoolExecutor(
                min(max_messages, MAX_CALLBACK_THREADS), thread_name_prefix=f"pubsub-{subscription}"
            )
        )
        try:
            future = self._subscriber.subscribe(
                self.subscription_path(subscription),
                callback=callback,
                flow_control=flow,
                scheduler=scheduler,
            )
        except Exception as exc:
            raise TransportError(f"subscribing to {subscription!r} failed: {_describe(exc)}") from exc
        sub = _Subscriber(future, subscription)
        self._subscribers.append(sub)
        return sub

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in self._subscribers:
            await sub.stop()
        self._subscribers.clear()

        def shutdown() -> None:
            try:
                self._publisher.stop()
            except Exception:  # best effort: pending publishes have already failed or landed
                log.debug("publisher stop failed", exc_info=True)
            self._subscriber.close()

        await asyncio.to_thread(shutdown)
