"""Helpers shared by the payments tests: signing events like Stripe, waiting for webhook deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, computed the way Stripe documents it."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def event(event_id: str, event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": 1767225600,
            "data": {"object": obj},
        }
    ).encode()


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 20.0) -> T:
    """Poll ``probe`` until it returns something truthy (webhooks arrive asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def card(http: httpx.Client, number: str) -> str:
    """A PaymentMethod for a test card number (what Stripe.js would create in the browser)."""
    resp = http.post(
        "/v1/payment_methods",
        data={
            "type": "card",
            "card[number]": number,
            "card[exp_month]": "12",
            "card[exp_year]": "2030",
            "card[cvc]": "123",
        },
    )
    resp.raise_for_status()
    return str(resp.json()["id"])
