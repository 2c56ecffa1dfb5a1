"""Pub/Sub topic and subscription administration for provisioning (create-if-missing, get, delete).

The SDK is imported on first use; ``PUBSUB_EMULATOR_HOST`` is honoured by the client library itself.
Google errors become :class:`TransportError` (network, permissions) or :class:`ProvisioningError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from chargectl.common.errors import ProvisioningError, TransportError

__all__ = ["BusAdmin", "PubSubAdmin", "SubscriptionInfo"]


@dataclass(frozen=True)
class SubscriptionInfo:
    name: str
    topic: str
    ack_deadline_s: int


class BusAdmin(Protocol):
    def topic_exists(self, name: str) -> bool: ...

    def create_topic(self, name: str) -> bool:
        """Create topic ``name``; False if it already existed."""
        ...

    def get_subscription(self, name: str) -> SubscriptionInfo | None: ...

    def create_subscription(self, name: str, topic: str, ack_deadline_s: int = 30) -> bool:
        """Create a pull subscription that never expires; False if it already existed."""
        ...

    def delete_subscription(self, name: str) -> bool:
        """Delete subscription ``name``; False if it did not exist."""
        ...

    def list_topics(self) -> list[str]: ...

    def list_subscriptions(self) -> list[str]: ...


class PubSubAdmin:
    """:class:`BusAdmin` on Google Cloud Pub/Sub (or its emulator) for one project."""

    def __init__(self, project: str) -> None:
        self.project = project
        self._publisher: Any = None
        self._subscriber: Any = None

    def _pub(self) -> Any:
        if self._publisher is None:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    def _sub(self) -> Any:
        if self._subscriber is None:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def _topic_path(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def _sub_path(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def _fail(self, what: str, exc: Exception) -> Exception:
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated | gexc.InvalidArgument):
            return ProvisioningError(f"Pub/Sub: {what} refused: {exc}")
        return TransportError(f"Pub/Sub: {what} failed: {exc}")

    def topic_exists(self, name: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            self._pub().get_topic(request={"topic": self._topic_path(name)})
        except gexc.NotFound:
            return False
        except gexc.GoogleAPIError as exc:
            raise self._fail(f"reading topic {name}", exc) from exc
        return True

    def create_topic(self, name: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            self._pub().create_topic(request={"name": self._topic_path(name)})
        except gexc.AlreadyExists:
            return False
        except gexc.GoogleAPIError as exc:
            raise self._fail(f"creating topic {name}", exc) from exc
        return True

    def get_subscription(self, name: str) -> SubscriptionInfo | None:
        from google.api_core import exceptions as gexc

        try:
            sub = self._sub().get_subscription(request={"subscription": self._sub_path(name)})
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as exc:
            raise self._fail(f"reading subscription {name}", exc) from exc
        return SubscriptionInfo(
            name=name, topic=str(sub.topic).rsplit("/", 1)[-1], ack_deadline_s=int(sub.ack_deadline_seconds)
        )

    def create_subscription(self, name: str, topic: str, ack_deadline_s: int = 30) -> bool:
        from google.api_core import exceptions as gexc

        request = {
            "name": self._sub_path(name),
            "topic": self._topic_path(topic),
            "ack_deadline_seconds": ack_deadline_s,
            # An expiration policy without a ttl means "never expire"; the default (31 days without a
            # pull) would delete the subscription of a Pi that stayed offline for a month.
            "expiration_policy": {},
        }
        try:
            self._sub().create_subscription(request=request)
        except gexc.AlreadyExists:
            return False
        except gexc.GoogleAPIError as exc:
            raise self._fail(f"creating subscription {name}", exc) from exc
        return True

    def delete_subscription(self, name: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            self._sub().delete_subscription(request={"subscription": self._sub_path(name)})
        except gexc.NotFound:
            return False
        except gexc.GoogleAPIError as exc:
            raise self._fail(f"deleting subscription {name}", exc) from exc
        return True

    def list_topics(self) -> list[str]:
        from google.api_core import exceptions as gexc

        try:
            topics = self._pub().list_topics(request={"project": f"projects/{self.project}"})
            return sorted(str(t.name).rsplit("/", 1)[-1] for t in topics)
        except gexc.GoogleAPIError as exc:
            raise self._fail("listing topics", exc) from exc

    def list_subscriptions(self) -> list[str]:
        from google.api_core import exceptions as gexc

        try:
            subs = self._sub().list_subscriptions(request={"project": f"projects/{self.project}"})
            return sorted(str(s.name).rsplit("/", 1)[-1] for s in subs)
        except gexc.GoogleAPIError as exc:
            raise self._fail("listing subscriptions", exc) from exc

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        if self._publisher is not None:
            transport = getattr(self._publisher, "transport", None)
            if transport is not None:
                transport.close()
            self._publisher = None
