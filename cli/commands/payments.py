"""``chargectl payments``: Stripe customers, billing portal, saved cards, top-ups, off-session charges, webhook.

Stripe keys come from the environment only: ``STRIPE_API_KEY`` (Stripe calls) and ``STRIPE_WEBHOOK_SECRET``
(the webhook). Portal and Checkout URLs are printed for the user on stdout and never logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from chargectl.services.adapters.store import Store
    from chargectl.services.payments.settings import PaymentsSettings
    from chargectl.services.payments.stripe_ops import StripeOps

__all__ = ["register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ApiBaseOpt = Annotated[
    str,
    typer.Option(
        "--api-base",
        help="A local Stripe-compatible server (localstripe) instead of Stripe.",
        show_default=False,
    ),
]
UidArg = Annotated[str, typer.Argument(help="The user's id (Google identity uid).", show_default=False)]
AmountArg = Annotated[
    str, typer.Argument(help="Amount in major units as you would write it, e.g. 5.00.", show_default=False)
]
CurrencyOpt = Annotated[
    str,
    typer.Option(
        "--currency", help="ISO currency (default: the user's, else [payments] currency).", show_default=False
    ),
]


@contextmanager
def _store(ctx: typer.Context) -> Iterator[tuple[Store, PaymentsSettings]]:
    """The shared store (``[payments] store_path`` overrides it with a SQLite file) and the settings."""
    from chargectl.services.payments.settings import PaymentsSettings
    from chargectl.services.wiring import open_store

    cfg = ctx.obj.config()
    settings = cfg.section("payments", PaymentsSettings)
    if settings.store_path is not None:
        from chargectl.services.adapters.sqlite_store import SqliteStore

        store: Store = SqliteStore(settings.store_path)
    else:
        store = open_store(cfg)
    try:
        yield store, settings
    finally:
        store.close()


@contextmanager
def _ops(ctx: typer.Context, api_base: str) -> Iterator[StripeOps]:
    from chargectl.common.clock import SystemClock
    from chargectl.services.payments.stripe_ops import StripeOps

    with _store(ctx) as (store, settings):
        yield StripeOps.connect(
            os.environ.get("STRIPE_API_KEY", ""), store, SystemClock(), settings, api_base
        )


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            typer.echo(line)


def _check_amount(amount: str, currency: str) -> None:
    """Refuse a malformed amount before anything is looked up or opened (the user's currency, when
    none is given, decides the allowed decimals later)."""
    from decimal import Decimal, InvalidOperation

    from chargectl.common.errors import PaymentError
    from chargectl.services.payments.money import parse_amount

    if currency:
        parse_amount(amount, currency)
        return
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        raise PaymentError(f"amount {amount!r} is not a number (write it like 5.00)") from None
    if not value.is_finite() or value <= 0:
        raise PaymentError(f"amount {amount!r} must be a positive number")


def _currency(ops: StripeOps, uid: str, currency: str) -> str:
    return currency or ops.user(uid).currency or ops.settings.currency


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Stripe payments and the prepaid ledger.", no_args_is_help=True)
    customer = typer.Typer(help="Stripe customers of users.", no_args_is_help=True)
    group.add_typer(customer, name="customer")

    @customer.command("create")
    def customer_create(
        ctx: typer.Context,
        uid: Annotated[
            str, typer.Option("--uid", help="The user's Google identity uid.", show_default=False)
        ],
        email: Annotated[str, typer.Option("--email", help="The user's email address.", show_default=False)],
        name: Annotated[str, typer.Option("--name", help="The user's display name.")] = "",
        api_base: ApiBaseOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Create the user's Stripe customer (once per uid; repeating it returns the same customer)."""
        with _ops(ctx, api_base) as ops:
            result = ops.ensure_customer(uid, email, name)
        data = {"user_id": result.user_id, "customer_id": result.customer_id, "created": result.created}
        verb = "created" if result.created else "exists"
        _emit(as_json, data, [f"{result.user_id}: Stripe customer {result.customer_id} ({verb})"])

    @customer.command("show")
    def customer_show(ctx: typer.Context, uid: UidArg, as_json: JsonOpt = False) -> None:
        """Show the user's account: Stripe customer, saved card, payment-action flag, balance."""
        from chargectl.common.errors import NotFoundError
        from chargectl.services.payments.ledger import Ledger
        from chargectl.services.payments.money import format_minor

        with _store(ctx) as (store, settings):
            user = store.get_user(uid)
            if user is None:
                raise NotFoundError(f"no user {uid!r}")
            currency = user.currency or settings.currency
            balance = Ledger(store).balance(uid, currency)
        data = {
            "user_id": user.user_id,
            "email": user.email,
            "name": user.name,
            "customer_id": user.stripe_customer_id,
            "currency": currency,
            "balance_minor": balance,
            "default_payment_method": user.default_payment_method,
            "needs_payment_action": user.needs_payment_action,
            "payment_action_intent_id": user.payment_action_intent_id,
        }
        lines = [f"{k}: {v}" for k, v in data.items() if k != "balance_minor"]
        lines.append(f"balance: {format_minor(balance, currency)}")
        _emit(as_json, data, lines)

    @group.command("portal")
    def portal(
        ctx: typer.Context,
        uid: UidArg,
        return_url: Annotated[
            str, typer.Option("--return-url", help="Where the portal sends the user back.")
        ] = "",
        api_base: ApiBaseOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Print a single-use billing portal URL where the user manages payment methods."""
        with _ops(ctx, api_base) as ops:
            url = ops.portal_url(uid, return_url)
        _emit(as_json, {"user_id": uid, "url": url}, [url])

    @group.command("setup")
    def setup(ctx: typer.Context, uid: UidArg, api_base: ApiBaseOpt = "", as_json: JsonOpt = False) -> None:
        """Print a Checkout page (setup mode) where the user saves a card for automatic top-ups."""
        with _ops(ctx, api_base) as ops:
            link = ops.setup_checkout(uid)
        _emit(as_json, {"user_id": uid, "session_id": link.session_id, "url": link.url}, [link.url])

    @group.command("topup")
    def topup(
        ctx: typer.Context,
        uid: UidArg,
        amount: AmountArg,
        currency: CurrencyOpt = "",
        api_base: ApiBaseOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Print a Checkout page for a one-off top-up; the balance is credited when Stripe confirms payment."""
        from chargectl.services.payments.money import parse_amount

        _check_amount(amount, currency)
        with _ops(ctx, api_base) as ops:
            code = _currency(ops, uid, currency)
            link = ops.topup_checkout(uid, parse_amount(amount, code), code)
        data = {
            "user_id": uid,
            "session_id": link.session_id,
            "amount_minor": link.amount_minor,
            "currency": link.currency,
            "url": link.url,
        }
        _emit(as_json, data, [link.url])

    @group.command("charge")
    def charge(
        ctx: typer.Context,
        uid: UidArg,
        amount: AmountArg,
        currency: CurrencyOpt = "",
        entry_id: Annotated[
            str, typer.Option("--entry-id", help="Our id for this top-up; repeating it never charges twice.")
        ] = "",
        api_base: ApiBaseOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        """Charge the user's saved card now (off-session). Exits 2 if the bank wants the user to authenticate."""
        from chargectl.services.payments.money import format_minor, parse_amount

        _check_amount(amount, currency)
        with _ops(ctx, api_base) as ops:
            code = _currency(ops, uid, currency)
            result = ops.charge_off_session(uid, parse_amount(amount, code), code, entry_id)
        data = {
            "user_id": uid,
            "payment_intent_id": result.payment_intent_id,
            "status": result.status,
            "amount_minor": result.amount_minor,
            "currency": result.currency,
            "entry_id": result.entry_id,
            "needs_payment_action": result.needs_action,
        }
        shown = format_minor(result.amount_minor, result.currency)
        if result.needs_action:
            line = (
                f"{uid}: {shown} needs the user to authenticate ({result.payment_intent_id}); account flagged"
            )
        else:
            line = f"{uid}: {shown} charged ({result.payment_intent_id}, {result.status}); credited by the webhook"
        _emit(as_json, data, [line])
        if result.needs_action:
            raise typer.Exit(2)

    @group.command("balance")
    def balance(
        ctx: typer.Context,
        uid: UidArg,
        history: Annotated[bool, typer.Option("--history", help="List the ledger entries too.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Show the user's prepaid balance (the sum of their ledger entries) per currency."""
        from chargectl.services.payments.ledger import Ledger
        from chargectl.services.payments.money import format_minor

        with _store(ctx) as (store, settings):
            ledger = Ledger(store)
            postings = ledger.history(uid)
        totals: dict[str, int] = {}
        for p in postings:
            totals[p.currency] = totals.get(p.currency, 0) + p.amount_minor
        if not totals:
            totals[settings.currency] = 0
        data: dict[str, Any] = {"user_id": uid, "balances_minor": totals}
        lines = [f"{uid}: {format_minor(v, c)}" for c, v in sorted(totals.items())]
        if history:
            data["entries"] = [
                {
                    "entry_id": p.entry_id,
                    "kind": p.kind,
                    "amount_minor": p.amount_minor,
                    "currency": p.currency,
                    "reference": p.reference,
                    "created_at_ms": p.created_at_ms,
                }
                for p in postings
            ]
            lines += [
                f"  {p.entry_id}  {p.kind:<13} {format_minor(p.amount_minor, p.currency)}" for p in postings
            ]
        _emit(as_json, data, lines)

    unmatched = typer.Typer(
        help="Payments Stripe took that could not be credited (unknown user, other currency).",
        invoke_without_command=True,
    )
    group.add_typer(unmatched, name="unmatched")

    @unmatched.callback()
    def unmatched_list(
        ctx: typer.Context,
        show_all: Annotated[bool, typer.Option("--all", help="Include payments already assigned.")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """List unmatched payments (oldest first); credit one with `unmatched assign ID --user U`."""
        if ctx.invoked_subcommand is not None:
            return
        from chargectl.services.payments.money import format_minor

        with _store(ctx) as (store, _settings):
            payments = store.list_unmatched_payments(include_resolved=show_all)
        rows = [p.to_dict() | {"resolved": p.resolved} for p in payments]
        lines = [
            f"{p.payment_id}  {format_minor(p.amount_minor, p.currency)}  {p.reason}"
            + (f"  customer {p.customer_id}" if p.customer_id else "")
            + (f"  uid? {p.uid_hint}" if p.uid_hint else "")
            + (f"  -> {p.resolved_user_id}" if p.resolved else "")
            for p in payments
        ] or ["no unmatched payments"]
        _emit(as_json, {"unmatched": rows}, lines)

    @unmatched.command("assign")
    def unmatched_assign(
        ctx: typer.Context,
        payment_id: Annotated[
            str,
            typer.Argument(
                help="The payment's id as listed (pi_…, cs_…, or reversal:… for money that went back).",
                show_default=False,
            ),
        ],
        user: Annotated[str, typer.Option("--user", help="The user to credit.", show_default=False)],
        as_json: JsonOpt = False,
    ) -> None:
        """Credit an unmatched payment to a user, or debit a kept refund or dispute (once; same currency as
        their account only)."""
        import time

        from chargectl.services.payments.money import format_minor
        from chargectl.services.payments.unmatched import assign_payment

        with _store(ctx) as (store, _settings):
            done = assign_payment(store, payment_id, user, int(time.time() * 1000))
        _emit(
            as_json,
            done.to_dict(),
            [
                f"{done.payment_id}: {format_minor(abs(done.amount_minor), done.currency)} "
                f"{'debited from' if done.amount_minor < 0 else 'credited to'} {user} (entry {done.entry_id})"
            ],
        )

    @group.command("webhook")
    def webhook(
        ctx: typer.Context,
        host: Annotated[
            str, typer.Option("--host", help="Interface to listen on (default: [payments] webhook_host).")
        ] = "",
        port: Annotated[
            int | None,
            typer.Option("--port", help="Port (default: [payments] webhook_port).", show_default=False),
        ] = None,
    ) -> None:
        """Serve the Stripe webhook (verifies signatures with STRIPE_WEBHOOK_SECRET) until interrupted."""
        from chargectl.common.clock import SystemClock
        from chargectl.common.errors import PaymentError
        from chargectl.services.payments.webhook import WebhookHandler, WebhookServer

        secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
        if not secret:
            raise PaymentError("no webhook secret: set STRIPE_WEBHOOK_SECRET")
        with _store(ctx) as (store, settings):
            handler = WebhookHandler(store, secret, SystemClock(), settings.webhook_tolerance_s)
            server = WebhookServer(
                handler,
                host or settings.webhook_host,
                settings.webhook_port if port is None else port,
                settings.max_body_bytes,
            )
            server.run()

    app.add_typer(group, name="payments")
