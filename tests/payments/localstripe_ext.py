"""Test-only additions to the localstripe server: the Stripe endpoints and events chargectl uses that it lacks.

Loaded by ``scripts/localstripe_server.py --extensions localstripe_ext`` (never imported by chargectl).
Objects are Stripe-shaped (ids, ``object`` names, fields as in Stripe's API reference) and every event is
signed and delivered by localstripe's own webhook sender, the way Stripe does
(``Stripe-Signature: t=<ts>,v1=HMAC-SHA256(secret, "<ts>.<body>")``).

Stripe API routes added:
    POST /v1/checkout/sessions, GET /v1/checkout/sessions/{id}, POST /v1/checkout/sessions/{id}/expire
    POST /v1/billing_portal/sessions
Missing events added (emitted after localstripe's own handling succeeded):
    setup_intent.succeeded (and the card attached to the customer, as Stripe does) on SetupIntent confirm
    charge.refunded after POST /v1/refunds
What a customer does on Stripe's hosted pages (test drivers, not Stripe API):
    POST /_test/checkout/sessions/{id}/complete  payment_method=pm_...  [async_payment=true]
    POST /_test/checkout/sessions/{id}/async_result  succeeded=true|false
    POST /_test/charges/{id}/dispute  [reason=fraudulent]
Real Stripe's answer to an off-session charge that needs 3-D Secure, for the card REAL_SCA_CARD only
(localstripe answers ``status=requires_action`` for every 3-D Secure card; other cards keep that):
    402 card_error ``authentication_required`` with the PaymentIntent left ``requires_payment_method``,
    and a ``payment_intent.payment_failed`` event carrying that error.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from localstripe.errors import UserError
from localstripe.resources import (
    Charge,
    Customer,
    Event,
    PaymentIntent,
    PaymentMethod,
    Refund,
    SetupIntent,
    StripeObject,
    random_id,
    try_convert_to_bool,
    try_convert_to_int,
)
from localstripe.server import get_post_data, json_response
from localstripe.webhooks import schedule_webhook

CHECKOUT_TTL_S = 24 * 3600
REAL_SCA_CARD = "4000002500003155"


def _emit(event_type: str, obj: StripeObject) -> None:
    schedule_webhook(Event(event_type, obj))


class CheckoutSession(StripeObject):  # type: ignore[misc]
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(
        self,
        base_url: str,
        mode: str | None = None,
        customer: str | None = None,
        line_items: list[dict[str, Any]] | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
        client_reference_id: str | None = None,
        metadata: dict[str, str] | None = None,
        payment_intent_data: dict[str, Any] | None = None,
        setup_intent_data: dict[str, Any] | None = None,
        payment_method_types: list[str] | None = None,
        currency: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        if mode not in ("payment", "setup"):
            raise UserError(400, "mode must be payment or setup")
        if not success_url:
            raise UserError(400, "Missing required param: success_url.")
        if customer is not None:
            Customer._api_retrieve(customer)
        amount = 0
        if mode == "payment":
            if not line_items:
                raise UserError(400, "Missing required param: line_items.")
            for item in line_items:
                price = item.get("price_data") or {}
                unit = try_convert_to_int(price.get("unit_amount"))
                quantity = try_convert_to_int(item.get("quantity", 1))
                if type(unit) is not int or unit <= 0 or type(quantity) is not int or quantity <= 0:
                    raise UserError(400, "Invalid line_items")
                if not price.get("currency"):
                    raise UserError(400, "Invalid line_items: currency")
                currency = price["currency"]
                amount += unit * quantity
        super().__init__()
        self.mode = mode
        self.customer = customer
        self.client_reference_id = client_reference_id
        self.metadata = metadata or {}
        self.currency = currency
        self.amount_subtotal = amount if mode == "payment" else None
        self.amount_total = amount if mode == "payment" else None
        self.payment_method_types = payment_method_types or ["card"]
        self.payment_intent = None
        self.setup_intent = None
        self.payment_status = "no_payment_required" if mode == "setup" else "unpaid"
        self.status = "open"
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.expires_at = self.created + CHECKOUT_TTL_S
        self.url = f"{base_url}/_test/checkout/pay/{self.id}#{random_id(24)}"
        self._payment_intent_data = payment_intent_data or {}
        self._setup_intent_data = setup_intent_data or {}


class BillingPortalSession(StripeObject):  # type: ignore[misc]
    object = "billing_portal.session"
    _id_prefix = "bps_"

    def __init__(
        self, base_url: str, customer: str | None = None, return_url: str | None = None, **kwargs: Any
    ):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        if not customer:
            raise UserError(400, "Missing required param: customer.")
        Customer._api_retrieve(customer)
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.configuration = "bpc_local"
        self.flow = None
        self.locale = None
        self.on_behalf_of = None
        self.url = f"{base_url}/_test/portal/session/{random_id(32)}"


class Dispute(StripeObject):  # type: ignore[misc]
    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge: Any, reason: str) -> None:
        super().__init__()
        self.amount = charge.amount
        self.currency = charge.currency
        self.charge = charge.id
        self.payment_intent = charge.payment_intent
        self.reason = reason
        self.status = "needs_response"
        self.metadata: dict[str, str] = {}
        self.is_charge_refundable = False


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _session(request: web.Request) -> CheckoutSession:
    session = CheckoutSession._api_retrieve(request.match_info["id"])
    assert isinstance(session, CheckoutSession)
    return session


async def create_checkout_session(request: web.Request) -> web.Response:
    data = await get_post_data(request) or {}
    data.pop("expand", None)
    session = CheckoutSession(_base_url(request), **data)
    return json_response(session._export())


async def retrieve_checkout_session(request: web.Request) -> web.Response:
    return json_response(_session(request)._export())


async def expire_checkout_session(request: web.Request) -> web.Response:
    session = _session(request)
    if session.status != "open":
        raise UserError(
            400, f"Only Checkout Sessions with a status of open can be expired ({session.status})."
        )
    session.status = "expired"
    session.url = None
    _emit("checkout.session.expired", session)
    return json_response(session._export())


async def create_portal_session(request: web.Request) -> web.Response:
    data = await get_post_data(request) or {}
    data.pop("expand", None)
    return json_response(BillingPortalSession(_base_url(request), **data)._export())


async def complete_checkout_session(request: web.Request) -> web.Response:
    """The customer pays (payment mode) or saves the card (setup mode) on the hosted page."""
    session = _session(request)
    data = await get_post_data(request) or {}
    if session.status != "open" or time.time() > session.expires_at:
        raise UserError(400, f"Checkout Session is {session.status}")
    pm_id = data.get("payment_method")
    if not isinstance(pm_id, str):
        raise UserError(400, "Missing payment_method")
    pm = PaymentMethod._api_retrieve(pm_id)
    if session.mode == "setup":
        intent = SetupIntent(
            customer=session.customer,
            usage="off_session",
            metadata=dict(session._setup_intent_data.get("metadata") or {}),
        )
        SetupIntent._api_confirm(intent.id, payment_method=pm.id)
        if intent.status != "succeeded":
            raise UserError(402, "card needs authentication")
        PaymentMethod._api_attach(pm.id, customer=session.customer)
        session.setup_intent = intent.id
        session.status = "complete"
        _emit("setup_intent.succeeded", intent)
        _emit("checkout.session.completed", session)
        return json_response(session._export())
    pi_data = session._payment_intent_data
    if pi_data.get("setup_future_usage") and session.customer:
        PaymentMethod._api_attach(pm.id, customer=session.customer)
    intent = PaymentIntent._api_create(
        confirm=True,
        amount=session.amount_total,
        currency=session.currency,
        customer=session.customer,
        payment_method=pm.id,
        metadata=dict(pi_data.get("metadata") or {}),
    )
    session.payment_intent = intent.id
    session.status = "complete"
    if try_convert_to_bool(data.get("async_payment", False)) is True:
        # A delayed method: the session completes unpaid; the outcome comes later.
        _emit("checkout.session.completed", session)
        return json_response(session._export())
    if intent.status != "succeeded":
        raise UserError(402, f"payment {intent.status}")
    session.payment_status = "paid"
    _emit("checkout.session.completed", session)
    return json_response(session._export())


async def async_result(request: web.Request) -> web.Response:
    session = _session(request)
    data = await get_post_data(request) or {}
    if session.status != "complete" or session.payment_status != "unpaid":
        raise UserError(400, "no delayed payment pending")
    if try_convert_to_bool(data.get("succeeded")) is True:
        session.payment_status = "paid"
        _emit("checkout.session.async_payment_succeeded", session)
    else:
        _emit("checkout.session.async_payment_failed", session)
    return json_response(session._export())


async def dispute_charge(request: web.Request) -> web.Response:
    charge = Charge._api_retrieve(request.match_info["id"])
    data = await get_post_data(request) or {}
    dispute = Dispute(charge, str(data.get("reason") or "fraudulent"))
    _emit("charge.dispute.created", dispute)
    return json_response(dispute._export())


@web.middleware
async def missing_events(request: web.Request, handler: Any) -> web.StreamResponse:
    """Emit the events localstripe's own handlers do not, after they succeeded."""
    response = await handler(request)
    if request.method != "POST" or response.status != 200:
        return response
    parts = request.path.strip("/").split("/")
    if parts[:2] == ["v1", "refunds"] and len(parts) == 2:
        assert isinstance(response, web.Response) and response.text is not None
        refund = Refund._api_retrieve(json.loads(response.text)["id"])
        _emit("charge.refunded", Charge._api_retrieve(refund.charge))
    elif parts == ["v1", "payment_intents"]:
        return await _real_stripe_sca(request, response)
    elif parts[:2] == ["v1", "setup_intents"] and len(parts) == 4 and parts[3] == "confirm":
        intent = SetupIntent._api_retrieve(parts[2])
        if intent.status == "succeeded":
            if intent.customer:
                PaymentMethod._api_attach(intent.payment_method, customer=intent.customer)
            _emit("setup_intent.succeeded", intent)
    return response


async def _real_stripe_sca(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    assert isinstance(response, web.Response) and response.text is not None
    data = await get_post_data(request) or {}
    intent = PaymentIntent._api_retrieve(json.loads(response.text)["id"])
    if intent.status != "requires_action" or try_convert_to_bool(data.get("off_session")) is not True:
        return response
    if PaymentMethod._api_retrieve(intent.payment_method)._card_number != REAL_SCA_CARD:
        return response
    intent.next_action = None
    intent.payment_method = None
    error = {
        "type": "card_error",
        "code": "authentication_required",
        "decline_code": "authentication_required",
        "message": "Your card was declined. This transaction requires authentication.",
    }
    event = Event("payment_intent.payment_failed", intent)
    event.data["object"]["last_payment_error"] = dict(error)
    schedule_webhook(event)
    exported = intent._export()
    exported["last_payment_error"] = dict(error)
    return json_response({"error": {**error, "payment_intent": exported}}, status=402)


def install(app: web.Application) -> None:
    app.middlewares.append(missing_events)
    app.router.add_post("/v1/checkout/sessions", create_checkout_session)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_checkout_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_checkout_session)
    app.router.add_post("/v1/billing_portal/sessions", create_portal_session)
    app.router.add_post("/_test/checkout/sessions/{id}/complete", complete_checkout_session)
    app.router.add_post("/_test/checkout/sessions/{id}/async_result", async_result)
    app.router.add_post("/_test/charges/{id}/dispute", dispute_charge)


__all__ = ["install"]
