"""The app API server (aiohttp): ID-token auth, CORS, limits, the routes of :mod:`.api` and the Stripe webhook.

Every ``/v1`` route needs ``Authorization: Bearer <Firebase ID token>``; the uid comes from the token only.
Errors are JSON ``{"error": "..."}`` with a 4xx/5xx status, never a traceback. Limits: request line and
headers must arrive within ``read_timeout_s`` of connecting (the connection is closed otherwise), the body
within ``read_timeout_s`` more (408), at most ``max_body_bytes`` (413; the webhook has its own cap);
every route is rate limited per uid, those that call Stripe also per client address (429 with
``Retry-After``). Blocking work (store, Stripe)
runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chargectl.common import sdnotify
from chargectl.common.clock import Clock
from chargectl.common.errors import ChargectlError, PaymentError, StoreError
from chargectl.common.ratelimit import RateLimiter
from chargectl.services.app.api import ApiError, AppApi
from chargectl.services.app.ratelimit import client_address
from chargectl.services.app.settings import AppSettings
from chargectl.services.app.tokens import (
    CertCache,
    CertsUnavailable,
    Identity,
    TokenError,
    unverified_kid,
    verify_token,
)
from chargectl.services.payments.autotopup import AutoTopup
from chargectl.services.payments.webhook import WebhookHandler, WebhookSignatureError

__all__ = ["AppServer"]

log = logging.getLogger("chargectl.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SWEEP_ACTIONS = frozenset({"charged", "declined", "needs payment action", "not answered; will retry"})


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's protocol-level log: malformed requests are the client's fault, one line, no traceback."""

    def exception(self, msg: object, *args: object, exc_info: object = None, **kwargs: object) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        self.logger.warning("%s: %s", str(msg) % args, str(error).splitlines()[0] if error else "bad request")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers or {}
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": message}, headers)


class AppServer:
    """The HTTP server; ``api`` None serves only the webhook (``chargectl payments webhook``)."""

    def __init__(
        self,
        settings: AppSettings,
        clock: Clock,
        api: AppApi | None = None,
        webhook: WebhookHandler | None = None,
        certs: CertCache | None = None,
        autotopup: AutoTopup | None = None,
        webhook_max_body_bytes: int = 1_000_000,
        webhook_at_root: bool = False,
    ) -> None:
        if api is not None and certs is None:
            raise ValueError("the /v1 routes need a certificate cache")
        self.settings = settings
        self.clock = clock
        self.api = api
        self.webhook = webhook
        self.certs = certs
        self.autotopup = autotopup
        self.webhook_max_body_bytes = webhook_max_body_bytes
        self.webhook_at_root = webhook_at_root
        self.call_limiter = RateLimiter(settings.calls_per_minute, 60.0)
        self.limiter = RateLimiter(settings.stripe_calls_per_minute, 60.0)
        self.ip_limiter = RateLimiter(settings.ip_calls_per_minute, 60.0)
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = ("", 0)

    # ------------------------------------------------------------------ the application

    def build(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._cors],
            client_max_size=max(self.settings.max_body_bytes, self.webhook_max_body_bytes),
        )
        app.router.add_get("/healthz", self._healthz)
        if self.api is not None:
            app.router.add_post("/v1/account", self._auth(self._post_account, stripe=True))
            app.router.add_get("/v1/account", self._auth(self._get_account))
            app.router.add_post("/v1/portal", self._auth(self._portal, stripe=True))
            app.router.add_post("/v1/setup", self._auth(self._setup, stripe=True))
            app.router.add_post("/v1/topup", self._auth(self._topup, stripe=True))
            app.router.add_put("/v1/auto-topup", self._auth(self._put_auto_topup))
            app.router.add_delete("/v1/auto-topup", self._auth(self._delete_auto_topup))
        if self.webhook is not None:
            app.router.add_post("/stripe/webhook", self._stripe_webhook)
            if self.webhook_at_root:
                app.router.add_post("/", self._stripe_webhook)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, str(exc))
        except TokenError as exc:
            return _error(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        except CertsUnavailable as exc:
            log.error("%s", exc)
            return _error(503, "cannot verify sign-in tokens right now")
        except StoreError as exc:
            log.error("store unavailable: %s", exc)
            return _error(503, "store unavailable")
        except web.HTTPException as exc:
            if exc.status >= 400:
                reason = exc.reason or "error"
                return _error(exc.status, reason.lower() if exc.status != 413 else "body too large")
            raise
        except ChargectlError as exc:
            log.warning("request refused: %s", exc)
            return _error(400, str(exc))
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _error(500, "internal error")

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        allowed = bool(origin) and origin.rstrip("/").lower() in self.settings.allowed_origins
        if request.method == "OPTIONS" and request.path.startswith("/v1/"):
            if not allowed:
                return _error(403, "origin not allowed")
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed and request.path.startswith("/v1/"):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
            response.headers["Vary"] = "Origin"
        return response

    async def _body(self, request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "body too large")
        try:
            raw = await asyncio.wait_for(request.read(), self.settings.read_timeout_s)
        except TimeoutError:
            raise ApiError(408, "request body too slow") from None
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, "body too large") from None
        if len(raw) > limit:
            raise ApiError(413, "body too large")
        return raw

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = await self._body(request, self.settings.max_body_bytes)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # nested past the parser's depth
            raise ApiError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    def _auth(
        self, route: Callable[[web.Request, Identity], Awaitable[web.Response]], stripe: bool = False
    ) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenError("missing Authorization: Bearer <Firebase ID token>")
            assert self.certs is not None
            token = token.strip()
            keys = await self.certs.keys(unverified_kid(token))
            who = verify_token(
                token, keys, self.settings.project_id, self.clock.now(), self.settings.clock_skew_s
            )
            now = self.clock.monotonic()
            wait_s = self.call_limiter.take(who.uid, now)
            if stripe and wait_s <= 0:
                wait_s = self.limiter.take(who.uid, now)
                if wait_s <= 0:
                    address = client_address(
                        request.remote,
                        request.headers.get("X-Forwarded-For", ""),
                        self.settings.forwarded_hops,
                    )
                    wait_s = self.ip_limiter.take(address, now)
            if wait_s > 0:
                return _error(429, "too many requests", {"Retry-After": str(max(1, round(wait_s + 0.5)))})
            return await route(request, who)

        return handler

    # ------------------------------------------------------------------ routes

    @property
    def _api(self) -> AppApi:
        assert self.api is not None
        return self.api

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def _post_account(self, request: web.Request, who: Identity) -> web.Response:
        await self._json_body(request)  # nothing is read from it: the token says who and what
        return _json(200, await asyncio.to_thread(self._api.ensure_account, who))

    async def _get_account(self, request: web.Request, who: Identity) -> web.Response:
        return _json(200, await asyncio.to_thread(self._api.get_account, who.uid))

    async def _portal(self, request: web.Request, who: Identity) -> web.Response:
        body = await self._json_body(request)
        return _json(200, await asyncio.to_thread(self._api.portal, who.uid, body))

    async def _setup(self, request: web.Request, who: Identity) -> web.Response:
        await self._json_body(request)
        return _json(200, await asyncio.to_thread(self._api.setup, who.uid))

    async def _topup(self, request: web.Request, who: Identity) -> web.Response:
        body = await self._json_body(request)
        return _json(200, await asyncio.to_thread(self._api.topup, who.uid, body))

    async def _put_auto_topup(self, request: web.Request, who: Identity) -> web.Response:
        body = await self._json_body(request)
        return _json(200, await asyncio.to_thread(self._api.set_auto_topup, who.uid, body))

    async def _delete_auto_topup(self, request: web.Request, who: Identity) -> web.Response:
        return _json(200, await asyncio.to_thread(self._api.clear_auto_topup, who.uid))

    async def _stripe_webhook(self, request: web.Request) -> web.Response:
        assert self.webhook is not None
        payload = await self._body(request, self.webhook_max_body_bytes)
        signature = request.headers.get("Stripe-Signature")
        try:
            outcome = await asyncio.to_thread(self.webhook.handle, payload, signature)
        except WebhookSignatureError as exc:
            log.warning("webhook refused: %s", exc)
            return _error(400, str(exc))
        except StoreError as exc:
            # Not acknowledged: Stripe delivers it again later.
            log.error("webhook not processed: %s", exc)
            return _error(503, "store unavailable")
        except PaymentError as exc:
            log.warning("webhook refused: %s", exc)
            return _error(400, str(exc))
        return _json(200, {"received": True, "action": outcome.action})

    # ------------------------------------------------------------------ serving

    async def _sweep_loop(self) -> None:
        assert self.autotopup is not None
        interval = self.settings.auto_topup_interval_s
        while True:
            await self.clock.sleep(interval)
            try:
                results = await asyncio.to_thread(self.autotopup.sweep)
            except ChargectlError as exc:
                log.error("auto top-up sweep failed: %s", exc)
                continue
            except Exception:
                log.exception("auto top-up sweep failed")
                continue
            acted = {uid: what for uid, what in results.items() if what in _SWEEP_ACTIONS}
            if acted:
                log.info("auto top-up sweep: %s", acted)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0 = any free port); the bound address."""
        runner = web.AppRunner(
            self.build(),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.settings.read_timeout_s,
            max_line_size=8190,
            max_field_size=8190,
            shutdown_timeout=5.0,
            logger=_ProtocolLog(logging.getLogger("chargectl.app.http"), {}),
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PaymentError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.address = (str(bound[0]), int(bound[1]))
        if self.autotopup is not None and self.settings.auto_topup_interval_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="auto-topup-sweep")
        log.info("app API listening on http://%s:%d", *self.address)
        return self.address

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _watchdog_loop(self) -> None:
        """Tell systemd the event loop is alive (a blocked loop starves this and the unit restarts)."""
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(sdnotify.WATCHDOG_MIN_INTERVAL_S)

    def run(self, host: str, port: int) -> None:
        """Serve until SIGINT or SIGTERM (the CLI); READY=1 once listening, WATCHDOG=1 while the loop runs."""

        async def main() -> None:
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            await self.start(host, port)
            sdnotify.ready()
            alive = asyncio.create_task(self._watchdog_loop(), name="watchdog")
            try:
                await done.wait()
            finally:
                sdnotify.stopping()
                alive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await alive
                await self.stop()
                log.info("app API stopped")

        asyncio.run(main())


class ThreadedServer:
    """An :class:`AppServer` on its own event loop thread (embedding, tests): ``start()`` / ``stop()``."""

    def __init__(self, server: AppServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="app-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(self._host, self._port), self._loop).result(30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
            raise

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
