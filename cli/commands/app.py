"""``chargectl app``: the HTTP API the frontend calls (sign-in hook, Stripe pages, auto top-up) and the webhook.

Stripe keys come from the environment only: ``STRIPE_API_KEY`` (Stripe calls) and ``STRIPE_WEBHOOK_SECRET``
(the webhook route). Settings: ``[app]`` (token checks, origins, limits) and ``[payments]``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from chargectl.services.adapters.store import Store

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The app API: what the frontend calls.", no_args_is_help=True)

    @group.command("serve")
    def serve(
        ctx: typer.Context,
        host: Annotated[
            str, typer.Option("--host", help="Interface (default: app.host in the config).")
        ] = "",
        port: Annotated[
            int | None,
            typer.Option("--port", help="Port (default: app.port in the config).", show_default=False),
        ] = None,
    ) -> None:
        """Serve the app API (/v1/…, /healthz) and the Stripe webhook (/stripe/webhook) until interrupted."""
        import logging

        from chargectl.common.alerts import AlertBook
        from chargectl.common.clock import SystemClock
        from chargectl.common.errors import ConfigError, PaymentError
        from chargectl.services.app.api import AppApi
        from chargectl.services.app.server import AppServer
        from chargectl.services.app.settings import AppSettings
        from chargectl.services.app.tokens import CertCache
        from chargectl.services.payments.autotopup import AutoTopup
        from chargectl.services.payments.settings import PaymentsSettings
        from chargectl.services.payments.stripe_ops import StripeOps
        from chargectl.services.payments.webhook import WebhookHandler
        from chargectl.services.wiring import open_store

        cfg = ctx.obj.config()
        settings = cfg.section("app", AppSettings)
        payments = cfg.section("payments", PaymentsSettings)
        if not settings.project_id:
            raise ConfigError("app.project_id: set the Firebase project whose ID tokens the API accepts")
        api_key = os.environ.get("STRIPE_API_KEY", "")
        secret = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
        if not api_key:
            raise PaymentError("no Stripe API key: set STRIPE_API_KEY")
        clock = SystemClock()
        if payments.store_path is not None:
            from chargectl.services.adapters.sqlite_store import SqliteStore

            store: Store = SqliteStore(payments.store_path)
        else:
            store = open_store(cfg)
        try:
            alerts = AlertBook()
            ops = StripeOps.connect(api_key, store, clock, payments)
            webhook = None
            if secret:
                webhook = WebhookHandler(store, secret, clock, payments.webhook_tolerance_s, alerts=alerts)
            else:
                logging.getLogger("chargectl.app").warning(
                    "STRIPE_WEBHOOK_SECRET is not set: /stripe/webhook is not served"
                )
            server = AppServer(
                settings,
                clock,
                api=AppApi(store, ops, settings, clock),
                webhook=webhook,
                certs=CertCache(settings.certs_url, clock, settings.certs_timeout_s),
                autotopup=AutoTopup(store, ops, clock, alerts),
                webhook_max_body_bytes=payments.max_body_bytes,
            )
            server.run(host or settings.host, settings.port if port is None else port)
        finally:
            store.close()

    app.add_typer(group, name="app")
