"""The Stripe webhook: verify the signature on the raw body, deduplicate by event id, credit or debit the ledger.

Theory of operation. Stripe signs ``f"{t}.{body}"`` with the endpoint secret (HMAC-SHA256, header
``Stripe-Signature: t=<unix s>,v1=<hex>[,v1=<hex>]``); a body that does not verify is refused (400) and
changes nothing. Every verified event is processed once:

- Ledger events post an entry whose id is the event id (create-if-absent), then record the event with
  ``Store.mark_event``; a crash between the two cannot lose a credit, because the retried delivery posts
  the same entry id again (a no-op) and then records it.
- Account events (the payment-action flag, the saved card) are recorded first and applied only on the
  first delivery, so an old event replayed later cannot undo a newer state.

Each payment is credited from exactly one event type: a Checkout top-up from
``checkout.session.completed`` (``payment_status == "paid"``) or ``checkout.session.async_payment_succeeded``;
an off-session top-up from ``payment_intent.succeeded`` only when the PaymentIntent's metadata marks it as
ours (``chargectl_purpose=offsession_topup``). Checkout's own PaymentIntent carries
``checkout_topup`` and is ignored there. A refund debits what Stripe has refunded on the charge beyond
what we already debited for it; a dispute debits the disputed amount.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chargectl.common.clock import Clock
from chargectl.common.codec import UserAccount
from chargectl.common.errors import PaymentError, StoreError
from chargectl.services.adapters.store import Store
from chargectl.services.payments.accounts import (
    CHECKOUT_TOPUP,
    OFFSESSION_TOPUP,
    PURPOSE_KEY,
    flag_payment_action,
    set_default_card,
    user_by_customer,
)
from chargectl.services.payments.ledger import Ledger, LedgerKind

__all__ = [
    "HANDLED_EVENTS",
    "Outcome",
    "WebhookHandler",
    "WebhookServer",
    "WebhookSignatureError",
    "parse_event",
    "verify_signature",
]

log = logging.getLogger("chargectl.payments.webhook")

Event = dict[str, Any]


class WebhookSignatureError(PaymentError):
    """The Stripe-Signature header is missing, malformed, stale or does not match the body."""


def verify_signature(payload: bytes, header: str | None, secret: str, now_s: float, tolerance_s: int) -> None:
    """Check Stripe's signature scheme on the raw ``payload``; raise WebhookSignatureError if it fails."""
    if not secret:
        raise WebhookSignatureError("no webhook secret configured")
    if not header:
        raise WebhookSignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError("malformed Stripe-Signature timestamp") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("malformed Stripe-Signature header")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, sig) for sig in signatures):
        raise WebhookSignatureError("webhook signature does not match the body")
    if now_s - timestamp > tolerance_s:
        raise WebhookSignatureError("webhook signature timestamp is too old")


def parse_event(payload: bytes) -> Event:
    """The event object of a verified body; PaymentError if it is not a Stripe event."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PaymentError("webhook body is not JSON") from None
    if not isinstance(event, dict):
        raise PaymentError("webhook body is not an event object")
    data = event.get("data")
    if (
        not isinstance(event.get("id"), str)
        or not event["id"]
        or not isinstance(event.get("type"), str)
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise PaymentError("webhook body lacks id, type or data.object")
    return event


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one event did (``action``: credited, debited, flagged, ..., ignored, duplicate)."""

    event_id: str
    event_type: str
    action: str
    user_id: str = ""
    amount_minor: int = 0
    currency: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "action": self.action,
            "user_id": self.user_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
        }


def _str(obj: Event, key: str) -> str:
    value = obj.get(key)
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    return value if isinstance(value, str) else ""


def _int(obj: Event, key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value


def _metadata(obj: Event) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class WebhookHandler:
    """Verifies and applies Stripe events to a :class:`Store` (thread-safe; one event at a time)."""

    def __init__(self, store: Store, secret: str, clock: Clock, tolerance_s: int = 300) -> None:
        self.store = store
        self.ledger = Ledger(store)
        self._secret = secret
        self.clock = clock
        self.tolerance_s = tolerance_s
        self._lock = threading.Lock()
        self.processed = 0
        # The latest outcomes, newest last (health output and tests; no payloads, no secrets).
        self.recent: deque[Outcome] = deque(maxlen=1000)
        self._ledger_handlers: dict[str, Callable[[Event, Event, int], Outcome]] = {
            "checkout.session.completed": self._checkout_paid,
            "checkout.session.async_payment_succeeded": self._checkout_paid,
            "payment_intent.succeeded": self._payment_succeeded,
            "charge.refunded": self._charge_refunded,
            "charge.dispute.created": self._dispute_created,
        }
        self._account_handlers: dict[str, Callable[[Event, Event, int], Outcome]] = {
            "payment_intent.payment_failed": self._payment_failed,
            "payment_intent.requires_action": self._payment_failed,
            "setup_intent.succeeded": self._setup_succeeded,
            "checkout.session.async_payment_failed": self._checkout_failed,
        }

    def handle(self, payload: bytes, signature: str | None) -> Outcome:
        """Verify ``payload`` against ``signature`` and process it; WebhookSignatureError if forged."""
        now_s = self.clock.now()
        verify_signature(payload, signature, self._secret, now_s, self.tolerance_s)
        return self.process(parse_event(payload), int(now_s * 1000))

    def process(self, event: Event, now_ms: int) -> Outcome:
        """Apply a verified event once; replays answer ``duplicate`` and change nothing."""
        event_id, event_type = event["id"], event["type"]
        obj: Event = event["data"]["object"]
        with self._lock:
            ledger_handler = self._ledger_handlers.get(event_type)
            if ledger_handler is not None:
                outcome = ledger_handler(event, obj, now_ms)
                first = self.store.mark_event(event_id, event_type, now_ms)
                if not first and outcome.action in ("ignored", "already posted"):
                    outcome = Outcome(event_id, event_type, "duplicate", outcome.user_id)
            elif not self.store.mark_event(event_id, event_type, now_ms):
                outcome = Outcome(event_id, event_type, "duplicate")
            else:
                account_handler = self._account_handlers.get(event_type)
                outcome = (
                    account_handler(event, obj, now_ms)
                    if account_handler is not None
                    else Outcome(event_id, event_type, "ignored")
                )
            self.processed += 1
            self.recent.append(outcome)
        log.info(
            "webhook %s %s: %s%s",
            event_id,
            event_type,
            outcome.action,
            f" user {outcome.user_id} {outcome.amount_minor} {outcome.currency}" if outcome.user_id else "",
        )
        return outcome

    # ------------------------------------------------------------------ who an object belongs to

    def _user(self, obj: Event) -> UserAccount | None:
        """Our account for a Stripe object: its ``metadata.uid`` (checked against its customer) or its customer."""
        customer = _str(obj, "customer")
        uid = _metadata(obj).get("uid")
        if isinstance(uid, str) and uid:
            user = self.store.get_user(uid)
            if user is not None and (not customer or user.stripe_customer_id == customer):
                return user
            if user is not None:
                log.warning("event object names user %s but customer %s is not theirs", uid, customer)
                return None
        return user_by_customer(self.store, customer)

    def _user_by_reference(self, *references: str) -> str:
        refs = {r for r in references if r}
        if not refs:
            return ""
        for entry in self.store.ledger_entries():
            if entry.reference in refs and entry.amount.amount_minor > 0:
                return entry.user_id
        return ""

    def _post(
        self,
        event: Event,
        user_id: str,
        kind: LedgerKind,
        amount_minor: int,
        currency: str,
        now_ms: int,
        reference: str,
        description: str,
    ) -> Outcome:
        posted = self.ledger.post(
            event["id"],
            user_id,
            kind,
            amount_minor,
            currency,
            now_ms,
            reference=reference,
            description=description,
        )
        action = ("credited" if amount_minor > 0 else "debited") if posted else "already posted"
        return Outcome(event["id"], event["type"], action, user_id, amount_minor, currency.lower())

    # ------------------------------------------------------------------ ledger events

    def _checkout_paid(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        ignored = Outcome(event["id"], event["type"], "ignored")
        if obj.get("mode") != "payment" or _metadata(obj).get(PURPOSE_KEY) != CHECKOUT_TOPUP:
            return ignored
        if obj.get("payment_status") != "paid":
            # Delayed methods complete unpaid; async_payment_succeeded credits them later.
            return Outcome(event["id"], event["type"], "awaiting payment")
        user = self._user(obj)
        amount, currency = _int(obj, "amount_total"), _str(obj, "currency")
        if user is None or amount <= 0 or not currency:
            log.warning("checkout session %s: unknown user or no amount; not credited", _str(obj, "id"))
            return ignored
        reference = _str(obj, "payment_intent") or _str(obj, "id")
        return self._post(
            event,
            user.user_id,
            "topup",
            amount,
            currency,
            now_ms,
            reference,
            f"Checkout top-up {_str(obj, 'id')}",
        )

    def _payment_succeeded(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        if _metadata(obj).get(PURPOSE_KEY) != OFFSESSION_TOPUP:
            return Outcome(event["id"], event["type"], "ignored")
        user = self._user(obj)
        amount = _int(obj, "amount_received") or _int(obj, "amount")
        currency = _str(obj, "currency")
        if user is None or amount <= 0 or not currency:
            log.warning("payment intent %s: unknown user or no amount; not credited", _str(obj, "id"))
            return Outcome(event["id"], event["type"], "ignored")
        flag_payment_action(self.store, user.user_id, _str(obj, "id"), now_ms, on=False)
        return self._post(
            event, user.user_id, "topup", amount, currency, now_ms, _str(obj, "id"), "Automatic top-up"
        )

    def _charge_refunded(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        charge_id, intent_id = _str(obj, "id"), _str(obj, "payment_intent")
        user = self._user(obj)
        user_id = user.user_id if user is not None else self._user_by_reference(intent_id, charge_id)
        currency = _str(obj, "currency")
        if not user_id or not currency:
            return Outcome(event["id"], event["type"], "ignored")
        if self.store.get_ledger_entry(event["id"]) is not None:
            return Outcome(event["id"], event["type"], "already posted", user_id)
        # charge.refunded carries the charge's cumulative amount_refunded (partial refunds fire again,
        # possibly out of order): debit only what is not debited yet for this charge.
        already = -sum(
            e.amount.amount_minor
            for e in self.store.ledger_entries(user_id)
            if e.reference == charge_id and e.kind == e.KIND_REFUND
        )
        delta = _int(obj, "amount_refunded") - already
        if delta <= 0:
            return Outcome(event["id"], event["type"], "ignored", user_id)
        return self._post(
            event,
            user_id,
            "refund",
            -delta,
            currency,
            now_ms,
            charge_id,
            f"Refund of {intent_id or charge_id}",
        )

    def _dispute_created(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        charge_id, intent_id = _str(obj, "charge"), _str(obj, "payment_intent")
        user_id = self._user_by_reference(intent_id, charge_id)
        amount, currency = _int(obj, "amount"), _str(obj, "currency")
        if not user_id or amount <= 0 or not currency:
            log.warning("dispute %s: no top-up of ours matches; not debited", _str(obj, "id"))
            return Outcome(event["id"], event["type"], "ignored")
        return self._post(
            event,
            user_id,
            "dispute",
            -amount,
            currency,
            now_ms,
            charge_id or intent_id,
            f"Dispute {_str(obj, 'id')}",
        )

    # ------------------------------------------------------------------ account events

    def _payment_failed(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        if _metadata(obj).get(PURPOSE_KEY) != OFFSESSION_TOPUP:
            return Outcome(event["id"], event["type"], "ignored")
        user = self._user(obj)
        if user is None:
            return Outcome(event["id"], event["type"], "ignored")
        error = obj.get("last_payment_error")
        code = error.get("code") if isinstance(error, dict) else None
        if obj.get("status") == "requires_action" or code == "authentication_required":
            flag_payment_action(self.store, user.user_id, _str(obj, "id"), now_ms)
            return Outcome(event["id"], event["type"], "flagged", user.user_id)
        return Outcome(event["id"], event["type"], f"failed ({code or 'unknown'})", user.user_id)

    def _setup_succeeded(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        user = self._user(obj)
        card = _str(obj, "payment_method")
        if user is None or not card:
            return Outcome(event["id"], event["type"], "ignored")
        set_default_card(self.store, user.user_id, card, now_ms)
        return Outcome(event["id"], event["type"], "card saved", user.user_id)

    def _checkout_failed(self, event: Event, obj: Event, now_ms: int) -> Outcome:
        user = self._user(obj)
        return Outcome(event["id"], event["type"], "payment failed", user.user_id if user else "")


HANDLED_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.requires_action",
    "setup_intent.succeeded",
    "charge.refunded",
    "charge.dispute.created",
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    handler: WebhookHandler
    max_body_bytes: int

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up is not our failure; anything else is a bug and keeps its traceback.
        log.debug("webhook connection from %s failed", client_address[0], exc_info=True)


class _Request(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/healthz", "/health"):
            self._answer(HTTPStatus.OK, {"status": "ok", "processed": self.server.handler.processed})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return
        length = int(length_header)
        if length > self.server.max_body_bytes:
            self.close_connection = True
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
            return
        payload = self.rfile.read(length)
        try:
            outcome = self.server.handler.handle(payload, self.headers.get("Stripe-Signature"))
        except WebhookSignatureError as exc:
            log.warning("webhook refused: %s", exc)
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except StoreError as exc:
            # Not acknowledged: Stripe delivers it again later.
            log.error("webhook not processed: %s", exc)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "store unavailable"})
        except PaymentError as exc:
            log.warning("webhook refused: %s", exc)
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        else:
            self._answer(HTTPStatus.OK, {"received": True, "action": outcome.action})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook http: " + format, *args)


class WebhookServer:
    """A small threaded HTTP server around a :class:`WebhookHandler` (POST any path; GET /healthz)."""

    def __init__(
        self, handler: WebhookHandler, host: str, port: int, max_body_bytes: int = 1_000_000
    ) -> None:
        self.handler = handler
        try:
            self._httpd = _Server((host, port), _Request)
        except OSError as exc:
            raise PaymentError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._httpd.handler = handler
        self._httpd.max_body_bytes = max_body_bytes
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Serve in a background thread (embedding, tests); ``stop()`` ends it."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="payments-webhook", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (the CLI)."""
        done = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.start()
        log.info("webhook listening on %s", self.url)
        try:
            done.wait()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.info("webhook stopped")
